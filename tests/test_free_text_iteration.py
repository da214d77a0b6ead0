"""One full free-text iteration through the real loop (actor, judge, meta-judge, pairs, summary) on the
scripted capable judge (``tests/scripted_judge.py``), checked against the corpus' intended results:
every judgment's score, the actor pairs (highest vs lowest mean intended score), the judge pairs
(closest vs farthest from the response's true quality), and the reason for every prompt without one.
DPO is replaced by a stand-in (tested elsewhere); the model is a local folder that is never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scripted_judge import ScriptedJudge, load_corpus

from metareward.config import IterationConfig, RunConfig
from metareward.engines.base import ChoiceRequest
from metareward.loop import Runner
from metareward.records import Judgment, MetaJudgment, PreferencePair, Response, read_jsonl
from metareward.stages.common import user_turn
from metareward.stages.judge import SCORE_CHOICES, constrained_prefix
from metareward.stages.meta_judge import verdict_prefix
from metareward.summary import format_summary, meta_position
from metareward.templates import judge_prompt, meta_judge_prompt

CORPUS = [r for r in load_corpus() if r.get("part", "iteration") == "iteration"]
QUALITY = {r["response"]: r["quality"] for r in CORPUS if r["kind"] == "actor"}
INTENDED: dict[tuple[str, str], list[float | None]] = {}
for _r in CORPUS:
    if _r["kind"] == "judge":
        INTENDED.setdefault((_r["instruction"], _r["response"]), []).append(_r["score"])


class StandInTrainRunner(Runner):
    """Records the training set instead of running DPO."""

    def train(self, model_path, train_set, store):
        store.layout.model.mkdir(parents=True, exist_ok=True)
        (store.layout.model / "pairs.json").write_text(json.dumps([p.id for p in train_set]))
        return {"pairs": len(train_set)}


def run_iteration(tmp_path: Path, engine: ScriptedJudge, scoring: str = "free_text") -> tuple[Path, dict]:
    instructions = list(dict.fromkeys(r["instruction"] for r in CORPUS if r["kind"] == "actor"))
    pool = tmp_path / "prompts.jsonl"
    pool.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(instructions)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = RunConfig(run_dir=str(tmp_path / "run"), prompts=str(pool), model=str(model))
    cfg.actor.k, cfg.judge.n = 3, 4
    cfg.judge.scoring = cfg.meta_judge.scoring = scoring
    cfg.iterations = [IterationConfig(prompts=len(instructions), rho=0.0, train_judge=True)]
    summaries = StandInTrainRunner(cfg, engine_factory=lambda path: engine, echo=lambda s: None).run()
    return Path(cfg.run_dir) / "iter_1", summaries[0]


@pytest.fixture(scope="module")
def capable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return run_iteration(tmp_path_factory.mktemp("capable"), ScriptedJudge())


def _prompt_text(it: Path) -> dict[str, str]:
    return {json.loads(line)["id"]: json.loads(line)["text"] for line in (it / "prompts.jsonl").read_text().splitlines()}


def test_every_judgment_scores_as_intended(capable: tuple[Path, dict]) -> None:
    it, _ = capable
    prompts = _prompt_text(it)
    responses = {r.id: r for r in read_jsonl(it / "responses.jsonl", Response)}
    judgments = read_jsonl(it / "judgments.jsonl", Judgment)
    assert len(judgments) == 120
    for j in judgments:
        r = responses[j.response_id]
        assert j.score == INTENDED[(prompts[r.prompt_id], r.text)][j.index], j.id


def test_actor_pairs_are_highest_vs_lowest_mean_intended_score(capable: tuple[Path, dict]) -> None:
    it, _ = capable
    prompts = _prompt_text(it)
    responses = {r.id: r for r in read_jsonl(it / "responses.jsonl", Response)}
    pairs = read_jsonl(it / "actor_pairs.jsonl", PreferencePair)
    means = {}
    for r in responses.values():
        valid = [s for s in INTENDED[(prompts[r.prompt_id], r.text)] if s is not None]
        means[r.id] = float(np.mean(valid)) if valid else None
    by_prompt: dict[str, list[float]] = {}
    for rid, m in means.items():
        if m is not None:
            by_prompt.setdefault(responses[rid].prompt_id, []).append(m)
    expected_prompts = {p for p, ms in by_prompt.items() if len(ms) >= 2 and max(ms) > min(ms)}
    assert {p.prompt_id for p in pairs} == expected_prompts and len(pairs) == 10
    for p in pairs:
        ms = by_prompt[p.prompt_id]
        assert means[p.chosen_id] == p.chosen_score == max(ms), p.id
        assert means[p.rejected_id] == p.rejected_score == min(ms), p.id


def test_judge_pairs_prefer_the_judgment_closest_to_the_true_quality(capable: tuple[Path, dict]) -> None:
    it, summary = capable
    prompts = _prompt_text(it)
    responses = {r.id: r for r in read_jsonl(it / "responses.jsonl", Response)}
    judgments = {j.id: j for j in read_jsonl(it / "judgments.jsonl", Judgment)}
    metas = read_jsonl(it / "meta_judgments.jsonl", MetaJudgment)
    pairs = read_jsonl(it / "judge_pairs.jsonl", PreferencePair)
    assert metas and all(m.verdict in ("A", "B", None) for m in metas)
    assert len(pairs) == 8
    for p in pairs:
        r = responses[p.meta["response_id"]]
        quality = QUALITY[r.text]
        valid = [s for s in INTENDED[(prompts[r.prompt_id], r.text)] if s is not None]
        distances = [abs(s - quality) for s in valid]
        c, rej = judgments[p.chosen_id], judgments[p.rejected_id]
        assert abs(c.score - quality) == min(distances), p.id
        assert abs(rej.score - quality) == max(distances), p.id
        assert p.meta["stated_scores"] == [c.score, rej.score]
        assert p.chosen == c.text and p.rejected == rej.text
    # the two prompts without a judge pair, by reason: all judges agree / one valid judgment a response
    assert summary["judge_skipped"] == {"zero_variance": 1, "fewer_than_two_valid_judgments": 1}
    assert summary["judge_prompts_without_pair"] == 2
    assert summary["meta_judge_position_only"] is False
    intended = [s for scores in INTENDED.values() for s in scores]
    assert summary["parse_rate"] == round(sum(s is not None for s in intended) / len(intended), 4) == 0.8833


def test_position_only_meta_judge_is_named(tmp_path: Path) -> None:
    it, summary = run_iteration(tmp_path, ScriptedJudge(meta="first_position"))
    assert read_jsonl(it / "judge_pairs.jsonl", PreferencePair) == []
    assert summary["judge_skipped"] == {
        "position_only_verdicts": 8, "zero_variance": 1, "fewer_than_two_valid_judgments": 1,
    }
    assert summary["meta_judge_position_only"] is True
    assert summary["meta_first_position_win_rate"] == 1.0 and summary["meta_dominant_position_share"] == 1.0
    manifest = json.loads((it / "manifest.json").read_text())
    assert manifest["summary"]["meta_judge_position_only"] is True
    assert manifest["stages"]["pairs"]["judge_skipped"]["position_only_verdicts"] == 8
    text = format_summary(1, summary, {})
    assert "meta-judge is POSITION-ONLY: the first position won every decisive verdict" in text


def test_scripted_choice_probabilities_follow_the_corpus() -> None:
    engine = ScriptedJudge()
    rec = next(r for r in CORPUS if r["kind"] == "judge" and r["score"] == 4.0)
    refusal = next(r for r in CORPUS if r["kind"] == "judge" and r["style"] == "refusal")
    meta = next(r for r in CORPUS if r["kind"] == "meta_judge" and r["verdict"] == "B")
    reqs = [
        ChoiceRequest("s", user_turn(judge_prompt(rec["instruction"], rec["response"])),
                      constrained_prefix(rec["judgment"]), SCORE_CHOICES),
        ChoiceRequest("u", user_turn(judge_prompt(refusal["instruction"], refusal["response"])),
                      constrained_prefix(refusal["judgment"]), SCORE_CHOICES),
        ChoiceRequest("v", user_turn(meta_judge_prompt(meta["instruction"], meta["response"], meta["judgment_a"],
                                                       meta["judgment_b"])),
                      verdict_prefix(meta["meta_judgment"]), ("A", "B")),
    ]
    out = {o.id: o.probs for o in engine.choice_probs(reqs)}
    assert out["s"] == pytest.approx([0, 0, 0, 0.15, 0.7, 0.15])
    assert out["u"] == pytest.approx([1 / 6] * 6)
    assert out["v"] == [0.2, 0.8]
    with pytest.raises(KeyError, match="no corpus judgment"):
        list(engine.choice_probs([ChoiceRequest("x", reqs[0].messages, "Made up.\nScore: ", SCORE_CHOICES)]))


def test_meta_position_statistics_exact() -> None:
    def m(r: int) -> MetaJudgment:
        return MetaJudgment(id=f"x{r}", prompt_id="p", response_id="p/r0", judgment_a="a", judgment_b="b", text="",
                            verdict={1: "A", -1: "B", 0: None}[r], result=r)

    assert meta_position([m(1), m(1), m(-1), m(0)]) == {
        "meta_first_position_win_rate": 0.5, "meta_second_position_win_rate": 0.25,
        "meta_dominant_position_share": 0.6667, "meta_judge_position_only": False,
    }
    assert meta_position([m(-1), m(0)])["meta_judge_position_only"] is True
    assert meta_position([m(0)])["meta_judge_position_only"] is False
    assert meta_position([]) == {
        "meta_first_position_win_rate": None, "meta_second_position_win_rate": None,
        "meta_dominant_position_share": None, "meta_judge_position_only": False,
    }
