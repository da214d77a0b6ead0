"""EFT data: schema errors, agreement with human ranks, down-sampling, split, resume (fake engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest

from metareward.eft import EFTExample, EFTSettings, agrees, build_eft, downsample, split_prompts
from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.errors import InputError
from metareward.templates import judge_prompt

# Each response text carries the scores its judgments will state: "...[s1,s2,s3]" -> "Score: s1" ...
# ("x" = a judgment without a score, i.e. invalid).


class KnownScoreEngine(Engine):
    """Judgments state the scores written in the judged response's text (see above)."""

    name = "known"

    def __init__(self, crash_after: int | None = None):
        self.generated = 0
        self.crash_after = crash_after
        self.choice_calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        for r in requests:
            if self.crash_after is not None and self.generated >= self.crash_after:
                raise RuntimeError("simulated crash")
            self.generated += 1
            user = r.messages[0]["content"]
            scores = user.split("[", 1)[1].split("]", 1)[0].split(",")
            assert len(scores) == r.n
            texts = [f"Reasoning {k}." if s == "x" else f"Reasoning {k}.\nScore: {s}" for k, s in enumerate(scores)]
            yield GenerationOutput(r.id, tuple(Completion(t, 5, True) for t in texts))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        # constrained mode: put all mass on the digit the judgment stated (0 if none)
        for r in requests:
            self.choice_calls += 1
            user = r.messages[0]["content"]
            scores = user.split("[", 1)[1].split("]", 1)[0].split(",")
            k = int(r.assistant_prefix.split("Reasoning ", 1)[1].split(".", 1)[0])
            digit = 0 if scores[k] == "x" else int(float(scores[k]))
            yield ChoiceOutput(id=r.id, probs=[1.0 if d == digit else 0.0 for d in range(6)])


def write_ranked(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    # agrees: means 5 > 3 > 1
    {"id": "a", "prompt": "PA", "responses": [
        {"text": "best [5,5,5]", "rank": 0}, {"text": "mid [3,3,3]", "rank": 1}, {"text": "bad [1,1,1]", "rank": 2}]},
    # disagrees: the worse response scores higher on average
    {"id": "b", "prompt": "PB", "responses": [
        {"text": "best [2,2,3]", "rank": 0}, {"text": "worse [4,4,4]", "rank": 1}]},
    # tie in means -> not strictly agreeing
    {"id": "c", "prompt": "PC", "responses": [
        {"text": "best [4,4,4]", "rank": 0}, {"text": "worse [4,4,4]", "rank": 1}]},
    # agrees with a human tie (ranks 0, 1, 1): the tied pair imposes nothing; invalid judgment ignored
    {"id": "d", "prompt": "PD", "responses": [
        {"text": "best [4,x,4]", "rank": 0}, {"text": "ok1 [2,3,1]", "rank": 1}, {"text": "ok2 [3,3,3]", "rank": 1}]},
    # unscored: a response with no valid judgment
    {"id": "e", "prompt": "PE", "responses": [
        {"text": "best [x,x,x]", "rank": 0}, {"text": "worse [1,1,1]", "rank": 1}]},
    # agrees
    {"id": "f", "prompt": "PF", "responses": [
        {"text": "best [4,5,4]", "rank": 0}, {"text": "worse [4,4,2]", "rank": 1}]},
]


def test_agrees():
    assert agrees([5, 3, 1], [0, 1, 2])
    assert not agrees([5, 3, 3], [0, 1, 2])
    assert agrees([5, 2, 3], [0, 1, 1])
    assert agrees([1, 2], [1, 0])
    assert not agrees([None, 1], [0, 1])


def test_keeps_exactly_the_agreeing_prompts(tmp_path):
    src = write_ranked(tmp_path / "ranked.jsonl", ROWS)
    out = tmp_path / "eft"
    report = build_eft(src, out, KnownScoreEngine(), EFTSettings(n=3, downsample_ratio=None, eval_fraction=0.0))
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert {e["id"].split("/")[0] for e in train} == {"a", "d", "f"}
    assert (report["prompts_agreeing"], report["prompts_disagreeing"], report["prompts_unscored"]) == (3, 2, 1)
    # one example per response: the judgment closest to the response's mean (ties: lower index)
    assert [(e["id"], e["score"], e["human_rank"]) for e in train] == [
        ("a/r0/j0", 5.0, 0), ("a/r1/j0", 3.0, 1), ("a/r2/j0", 1.0, 2),
        ("d/r0/j0", 4.0, 0), ("d/r1/j0", 2.0, 1), ("d/r2/j0", 3.0, 1),
        ("f/r0/j0", 4.0, 0), ("f/r1/j0", 4.0, 1),
    ]
    first = train[0]
    assert first["prompt"] == judge_prompt("PA", "best [5,5,5]")
    assert first["completion"] == "Reasoning 0.\nScore: 5"
    assert set(first) == {"id", "prompt", "completion", "score", "human_rank"}
    assert (out / "eval.jsonl").read_text() == ""
    assert report["judgments"] == 42 and report["valid_judgments"] == 38
    assert report["scores_before"] == {"1": 1, "2": 1, "3": 2, "4": 3, "5": 1}
    judgments = (out / "judgments.jsonl").read_text().splitlines()
    assert len(judgments) == 42 and json.loads(judgments[0])["id"] == "a/r0/j0"


def test_all_judgments_downsampling_and_split(tmp_path):
    src = write_ranked(tmp_path / "ranked.jsonl", ROWS)
    out = tmp_path / "eft"
    s = EFTSettings(n=3, per_response="all", downsample_ratio=1.0, eval_fraction=0.34, seed=3)
    report = build_eft(src, out, KnownScoreEngine(), s)
    # valid judgments of agreeing prompts a, d, f: scores 5,5,5,3,3,3,1,1,1 | 4,4,2,3,1,3,3,3 | 4,5,4,4,4,2
    assert report["scores_before"] == {"1": 4, "2": 2, "3": 7, "4": 6, "5": 4}
    # the most common score (3, seven times) is cut to the count of the second (4, six times)
    assert report["downsampled"] == {"score": 3.0, "before": 7, "after": 6}
    assert report["scores_after"] == {"1": 4, "2": 2, "3": 6, "4": 6, "5": 4}
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    train_p = {e["id"].split("/")[0] for e in train}
    eval_p = {e["id"].split("/")[0] for e in evals}
    assert len(eval_p) == 1 and not train_p & eval_p and train_p | eval_p == {"a", "d", "f"}
    assert eval_p == split_prompts(["a", "d", "f"], 0.34, 3)
    assert report["train"] + report["eval"] == 22


def test_downsample_cuts_the_most_common_score_to_the_second():
    ex = [EFTExample(f"p/r{i}/j0", "", "", s, 0) for i, s in enumerate([4, 4, 4, 4, 4, 3, 3, 5])]
    kept, info = downsample(ex, 1.0, seed=0)
    assert info == {"score": 4, "before": 5, "after": 2}
    assert sorted(e.score for e in kept) == [3, 3, 4, 4, 5]
    kept2, _ = downsample(ex, 1.0, seed=0)
    assert [e.id for e in kept] == [e.id for e in kept2]  # seeded
    assert downsample(ex, None, 0)[0] == ex
    assert downsample(ex, 3.0, 0)[1]["score"] is None  # 5 <= 3 * 2


def test_constrained_mode_uses_choice_probs(tmp_path):
    src = write_ranked(tmp_path / "ranked.jsonl", ROWS[:2])
    engine = KnownScoreEngine()
    report = build_eft(src, tmp_path / "eft", engine,
                       EFTSettings(n=3, scoring="constrained", downsample_ratio=None, eval_fraction=0.0))
    assert engine.choice_calls == 15
    assert report["prompts_agreeing"] == 1 and report["prompts_disagreeing"] == 1
    train = [json.loads(x) for x in (tmp_path / "eft" / "train.jsonl").read_text().splitlines()]
    assert [e["completion"] for e in train] == ["Reasoning 0.\nScore: 5", "Reasoning 0.\nScore: 3",
                                                 "Reasoning 0.\nScore: 1"]


def test_resume_after_crash_gives_the_same_files(tmp_path):
    src = write_ranked(tmp_path / "ranked.jsonl", ROWS)
    s = EFTSettings(n=3, chunk_size=12, eval_fraction=0.34)
    build_eft(src, tmp_path / "ref", KnownScoreEngine(), s)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_eft(src, tmp_path / "run", KnownScoreEngine(crash_after=9), s)
    again = KnownScoreEngine()
    build_eft(src, tmp_path / "run", again, s)
    assert again.generated == 14 - 8  # two chunks of 12 sequences (4 requests of n = 3) were logged before the crash
    for name in ("train.jsonl", "eval.jsonl", "judgments.jsonl"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "ref" / name).read_text()

    def no_engine():
        raise AssertionError("a finished build must not load a model")

    build_eft(src, tmp_path / "run", no_engine, s)
    with pytest.raises(InputError, match="other settings or input"):
        build_eft(src, tmp_path / "run", no_engine, EFTSettings(n=2))


@pytest.mark.slow
def test_eft_with_real_model_constrained(tmp_path):
    from metareward.eft import EXAMPLE_RANKED
    from metareward.engines.hf import HFEngine
    from metareward.models import resolve_model

    src = tmp_path / "one.jsonl"
    src.write_text(EXAMPLE_RANKED.read_text().splitlines(keepends=True)[1])
    engine = HFEngine(resolve_model("smollm2-135m"), device="cpu", dtype="float32", batch_size=3, threads=1)
    s = EFTSettings(n=1, max_tokens=12, scoring="constrained", eval_fraction=0.0, downsample_ratio=None)
    report = build_eft(src, tmp_path / "eft", engine, s)
    assert report["judgments"] == 3 and report["valid_judgments"] == 3  # constrained: always scored
    assert report["prompts_agreeing"] + report["prompts_disagreeing"] == 1
    train = [json.loads(x) for x in (tmp_path / "eft" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 3 * report["prompts_agreeing"]
    for e in train:
        assert e["completion"].rstrip().endswith(f"Score: {int(e['score'])}")
    judgments = [json.loads(x) for x in (tmp_path / "eft" / "judgments.jsonl").read_text().splitlines()]
    assert all(len(j["score_probs"]) == 6 and 0 <= j["score"] <= 5 for j in judgments)


def test_cli_eft_build_names_the_bad_line(tmp_path, capsys):
    from metareward.cli import main

    bad = tmp_path / "r.jsonl"
    bad.write_text('{"prompt": "p", "responses": [{"text": "a", "rank": "first"}, {"text": "b", "rank": 1}]}\n')
    assert main(["eft", "build", str(bad), "--out", str(tmp_path / "eft")]) == 2
    assert "r.jsonl:1: field 'responses[0].rank' must be an integer" in capsys.readouterr().err
    assert main(["eft", "sft", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "m")]) == 2
    assert "data: file not found" in capsys.readouterr().err
