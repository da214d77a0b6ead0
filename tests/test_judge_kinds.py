"""Judge kinds: verifier, python reward functions, another model; the loop with each (fake engine)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from fakes import FakeEngine
from test_loop import FakeTrainRunner

from metareward.config import IterationConfig, RunConfig, load_config
from metareward.errors import InputError
from metareward.layout import RunLayout
from metareward.records import Judgment, PreferencePair, Prompt, Response, read_jsonl
from metareward.stages import judge
from metareward.stages.reward_judges import (
    function_judge,
    invalid_reasons,
    load_reward_function,
    python_judgments,
    verifier_judgments,
)
from metareward.verifiable.constraints import Constraint
from metareward.verifiable.verify import verify

pytest.importorskip("if_verifiable")

PROMPTS = {"a": Prompt("a", "Say something."), "b": Prompt("b", "Say more.")}
RESPONSES = [Response("a/r0", "a", 0, "the river, flows"), Response("a/r1", "a", 1, "no river here"),
             Response("b/r0", "b", 0, "nothing")]
CONSTRAINTS = {"a": [Constraint("punctuation:no_comma"), Constraint("keywords:existence", {"keywords": ["river"]})],
               "b": [Constraint("keywords:existence", {"keywords": ["river"]})]}


def test_verifier_scores_are_five_times_the_share_satisfied():
    js = verifier_judgments(PROMPTS, RESPONSES, CONSTRAINTS)
    assert [(j.id, j.index, j.score) for j in js] == [("a/r0/j0", 0, 2.5), ("a/r1/j0", 0, 5.0), ("b/r0/j0", 0, 0.0)]
    assert js[0].text.endswith("Score: 2.5") and "punctuation:no_comma" in js[0].text
    with pytest.raises(InputError, match="prompt b: no constraints"):
        verifier_judgments(PROMPTS, RESPONSES, {"a": CONSTRAINTS["a"]})


def test_a_failing_checker_gives_an_invalid_counted_judgment():
    bad = {"a": [Constraint("length_constraints:number_words", {"num_words": "x", "relation": "bogus"})],
           "b": CONSTRAINTS["b"]}
    js = verifier_judgments(PROMPTS, RESPONSES, bad)
    assert [j.score for j in js] == [None, None, 0.0]
    assert invalid_reasons(js) == Counter({"checker_error": 2})


def reward_length(prompt: str, response: str) -> float:
    return min(5.0, len(response) / 4)


def test_python_reward_function_and_every_invalid_value():
    values = iter([3, float("nan"), math.inf, 7.5, "4", True, None])

    def fn(prompt, response):
        v = next(values)
        if v is None:
            raise RuntimeError("boom")
        return v

    responses = [Response(f"a/r{i}", "a", i, "x") for i in range(7)]
    js = python_judgments(PROMPTS, responses, fn)
    assert [j.score for j in js] == [3.0, None, None, None, None, None, None]
    assert js[0].text == "Score: 3"
    assert invalid_reasons(js) == Counter({"reward_not_finite": 2, "reward_out_of_range": 1,
                                           "reward_not_a_number": 2, "reward_raised": 1})
    assert "RuntimeError: boom" in js[6].text


def test_reward_functions_load_by_name_with_clear_errors():
    assert load_reward_function("python: test_judge_kinds:reward_length") is reward_length
    for kind, message in [("python: nosuchmodule_xyz:f", "cannot load"), ("python: test_judge_kinds:nope", "cannot load"),
                          ("python: test_judge_kinds:PROMPTS", "not callable"), ("python: justmodule", "expected")]:
        with pytest.raises(InputError, match=message):
            load_reward_function(kind)
    assert function_judge("self", "unused") is None and function_judge("model", "unused") is None


def test_judge_stage_dispatches_by_kind():
    cfg = RunConfig().judge
    cfg.kind = "verifier"
    with pytest.raises(ValueError, match="function judge"):
        judge.run(PROMPTS, RESPONSES, cfg, 0, 1, passes=None)  # type: ignore[arg-type]
    js = judge.run(PROMPTS, RESPONSES, cfg, 0, 1, passes=None,  # type: ignore[arg-type]
                   function_judge=lambda p, r: verifier_judgments(p, r, CONSTRAINTS))
    assert [j.score for j in js] == [2.5, 5.0, 0.0]


def test_config_validates_judge_kinds(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts: x.txt\n")
    assert load_config(path, {"judge.kind": "python: a.b:c"}).judge.kind == "python: a.b:c"
    for overrides, message in [({"judge.kind": "oracle"}, "judge.kind: must be one of"),
                               ({"judge.kind": "python: a.b"}, "judge.kind: expected"),
                               ({"judge.kind": "model"}, "judge.model: judge.kind: model needs"),
                               ({"judge.kind": "model", "judge.model": "m", "judge.engine": {"batch_size": 0}},
                                "engine.batch_size")]:
        with pytest.raises(InputError, match=message):
            load_config(path, overrides)
    cfg = load_config(path, {"judge.kind": "verifier"})
    assert not cfg.judge_trained(1) and "judge.kind: verifier" in cfg.meta_judge_skip_reason(1)
    assert load_config(path).meta_judge_skip_reason(1) is None


def write_pool(tmp_path: Path, n: int = 6) -> Path:
    """Prompts whose one constraint ('dup' must appear) the fake engine's third sample meets."""
    path = tmp_path / "pool.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?",
             "constraints": [{"id": "keywords:existence", "kwargs": {"keywords": ["dup"]}}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tmp_path: Path, kind: str, mode: str = "meta-rewarding") -> RunConfig:
    cfg = RunConfig(run_dir=str(tmp_path / "run"), prompts=str(write_pool(tmp_path)), mode=mode)
    cfg.judge.kind = kind
    cfg.actor.k, cfg.judge.n = 4, 3
    cfg.iterations = [IterationConfig(prompts=3, train_judge=True), IterationConfig(prompts=3, train_judge=True)]
    return cfg


def test_the_loop_with_a_verifier_judge(tmp_path):
    cfg = make_cfg(tmp_path, "verifier")
    summaries = FakeTrainRunner(cfg, engine_factory=lambda p: FakeEngine(), echo=lambda s: None).run()
    layout = RunLayout(cfg.run_dir)
    for i, summary in enumerate(summaries, start=1):
        it = layout.iteration(i)
        manifest = json.loads(it.manifest.read_text())
        assert "meta_judge" not in manifest["stages"]
        assert "judge.kind: verifier" in summary["meta_judge_skipped"]
        assert manifest["stages"]["judge"]["invalid"] == {}
        responses = read_jsonl(it.artifact("responses"), Response)
        judgments = read_jsonl(it.artifact("judgments"), Judgment)
        assert [j.response_id for j in judgments] == [r.id for r in responses]  # one judgment per response
        pairs = read_jsonl(it.artifact("actor_pairs"), PreferencePair)
        assert read_jsonl(it.artifact("judge_pairs"), PreferencePair) == []
        assert len(pairs) == 3
        for p in pairs:  # every chosen response satisfies the constraint and every rejected one does not
            assert (p.chosen_score, p.rejected_score) == (5.0, 0.0) and "dup" in p.chosen and "dup" not in p.rejected
            cons = [Constraint("keywords:existence", {"keywords": ["dup"]})]
            assert verify(p.prompt_id, p.prompt, cons, p.chosen).satisfied > verify(p.prompt_id, p.prompt, cons,
                                                                                    p.rejected).satisfied


def test_the_loop_with_a_python_judge(tmp_path):
    cfg = make_cfg(tmp_path, "python: test_judge_kinds:reward_length")
    FakeTrainRunner(cfg, engine_factory=lambda p: FakeEngine(), echo=lambda s: None).run()
    it = RunLayout(cfg.run_dir).iteration(1)
    judgments = read_jsonl(it.artifact("judgments"), Judgment)
    responses = {r.id: r for r in read_jsonl(it.artifact("responses"), Response)}
    assert [j.score for j in judgments] == [reward_length("", responses[j.response_id].text) for j in judgments]


def test_a_verifier_run_refuses_a_pool_without_constraints(tmp_path):
    cfg = make_cfg(tmp_path, "verifier")
    lines = Path(cfg.prompts).read_text().splitlines()
    lines[3] = json.dumps({"id": "q3", "prompt": "Hi?"})
    Path(cfg.prompts).write_text("\n".join(lines) + "\n")
    built = []
    with pytest.raises(InputError, match=r"pool.jsonl:4: field 'constraints'"):
        FakeTrainRunner(cfg, engine_factory=lambda p: built.append(p), echo=lambda s: None).preflight()
    assert built == []


def test_the_loop_with_another_judge_model(tmp_path):
    """``model``: the judge stage runs on the judge model's engine, the actor on the run's model."""
    judge_dir = tmp_path / "judge-model"
    judge_dir.mkdir()
    (judge_dir / "config.json").write_text("{}")
    cfg = make_cfg(tmp_path, "model")
    cfg.judge.model = str(judge_dir)
    cfg.iterations = cfg.iterations[:1]
    loaded = []

    def factory(path):
        loaded.append(path)
        return FakeEngine()

    FakeTrainRunner(cfg, engine_factory=factory, echo=lambda s: None).run()
    assert loaded[1] == str(judge_dir) and loaded[0] != str(judge_dir)
    it = RunLayout(cfg.run_dir).iteration(1)
    assert "meta_judge" not in json.loads(it.manifest.read_text())["stages"]
    judgments = read_jsonl(it.artifact("judgments"), Judgment)
    assert len(judgments) == 3 * len(read_jsonl(it.artifact("responses"), Response))  # N = 3 per response
