"""Judge accuracy against gold labels (``evaluation.suites.judge_bench``): data, scoring, scripted judges,
the bootstrap interval against a hand-written one, the injection subset and resume through the cache."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from metareward.config import EngineConfig, JudgeConfig
from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.errors import InputError
from metareward.evaluation.judge_addressed import INJECTIONS, KINDS, judge_addressed
from metareward.evaluation.suites import SUITES
from metareward.evaluation.suites import judge_bench as jb
from metareward.evaluation.suites import judge_bench_judging as jbj
from metareward.evaluation.suites.annotation_cache import AnnotationCache
from metareward.evaluation.suites.run import JudgeSpec, parse_suites

SHARED = Path("/work/shared/judge-bench")
FILES = ("natural", "adversarial-neighbor", "adversarial-gptinst", "adversarial-gptout", "adversarial-manual",
         "mt-bench", "faireval", "llmeval2")


# ---------------------------------------------------------------------------------------- scripted judges


def _judged_response(user: str) -> str:
    return user.split("<response>", 1)[1].rsplit("</response>", 1)[0]


def _shown_pair(user: str) -> tuple[str, str]:
    rest = user.split("\n\nResponse A: ", 1)[1]
    a, rest = rest.split("\n\nResponse B: ", 1)
    b = rest.rsplit("\n\nAfter examining the original question and both responses:", 1)[0]
    return a, b


class ScriptedJudge(Engine):
    """``behaviour``: ``gold`` (scores the gold output 5, the other 1; picks the gold response), ``first``
    (always Response A; scores every output 3) or ``garbage`` (no score, no verdict, NaN probabilities).
    Counts what it was asked."""

    name = "scripted"

    def __init__(self, behaviour: str, golds: set[str] = frozenset(), fail_after: int | None = None):
        self.behaviour, self.golds, self.fail_after = behaviour, golds, fail_after
        self.asked = 0

    def _tick(self) -> None:
        if self.fail_after is not None and self.asked >= self.fail_after:
            raise RuntimeError("killed")
        self.asked += 1

    def _text(self, user: str) -> str:
        if self.behaviour == "garbage":
            return "lorem ipsum dolor"
        if "<response>" in user:  # the pointwise judge prompt
            if self.behaviour == "first":
                return "Fine.\nScore: 3"
            return f"Judged.\nScore: {5 if _judged_response(user) in self.golds else 1}"
        if self.behaviour == "first":
            return "Winner: Response A"
        a, _ = _shown_pair(user)
        return f"Winner: Response {'A' if a in self.golds else 'B'}"

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        for r in requests:
            self._tick()
            texts = [self._text(r.messages[-1]["content"])] * r.n
            yield GenerationOutput(r.id, tuple(Completion(t, 3, True) for t in texts))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        for r in requests:
            self._tick()
            user = r.messages[-1]["content"]
            if self.behaviour == "garbage":
                probs = [math.nan] * len(r.choices)
            elif r.choices == ("A", "B"):
                first = self.behaviour == "first" or _shown_pair(user)[0] in self.golds
                probs = [0.8, 0.2] if first else [0.2, 0.8]
            else:
                top = 3 if self.behaviour == "first" else 5 if _judged_response(user) in self.golds else 1
                probs = [0.9 if k == top else 0.02 for k in range(6)]
            yield ChoiceOutput(r.id, probs)


def golds_of(pairs: Sequence[jb.GoldPair]) -> set[str]:
    return {p.output(p.label) for p in pairs}


def run_suites(tmp_path: Path, engine: Engine, suites=("llmbar", "human-pref"), limit=12, scoring="free_text",
               judges=("seed",), modes=jbj.MODES) -> tuple[dict, list[str]]:
    made: list[str] = []

    def make(spec: JudgeSpec) -> Engine:
        made.append(spec.ref)
        return engine

    cfg = JudgeConfig(n=2, max_tokens=16, scoring=scoring)
    specs = [(label, JudgeSpec(ref=label, path=f"model-{label}", engine=EngineConfig())) for label in judges]
    cache = AnnotationCache(tmp_path / "annotations.jsonl")
    block = jbj.evaluate(suites, specs, make, cfg, cache, limit=limit, seed=0, rounds=200, log=lambda s: None,
                         modes=modes)
    return block, made


def all_pairs(suites, limit) -> list[jb.GoldPair]:
    return [p for s in suites for p in jb.load_suite(s, limit)[0]]


# ---------------------------------------------------------------------------------------- data


def test_suites_are_registered():
    assert {"llmbar", "human-pref", "judge-injection"} <= set(SUITES)
    assert parse_suites("llmbar,human-pref") == ("llmbar", "human-pref")


@pytest.mark.parametrize("name", FILES)
def test_shipped_files_are_the_upstream_files_unchanged(name):
    shipped = resources.files("metareward.data").joinpath(f"judge_bench/{name}.json").read_bytes()
    if SHARED.is_dir():
        assert shipped == (SHARED / f"{name}.json").read_bytes()
    assert resources.files("metareward.data").joinpath("judge_bench/LICENSE").read_text().startswith("MIT License")


def test_suite_sizes_and_subsets():
    llmbar, n = jb.load_suite("llmbar")
    assert n == len(llmbar) == 419
    assert jb.strata(llmbar) == {"adversarial-gptinst": 92, "adversarial-gptout": 47, "adversarial-manual": 46,
                                 "adversarial-neighbor": 134, "natural": 100}
    human, n = jb.load_suite("human-pref")
    assert n == 466 and jb.strata(human) == {"faireval": 66, "llmeval2": 200, "mt-bench": 200}
    assert all(p.label in (1, 2) for p in llmbar + human)


def test_limit_is_a_fixed_stratified_sample():
    a, _ = jb.load_suite("llmbar", 40)
    b, _ = jb.load_suite("llmbar", 40)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 40
    # quotas 9.55/12.79/8.78/4.49/4.39 of 100/134/92/47/46: floors 37, remainders to neighbor, gptinst, natural
    assert jb.strata(a) == {"adversarial-gptinst": 9, "adversarial-gptout": 4, "adversarial-manual": 4,
                            "adversarial-neighbor": 13, "natural": 10}


def test_injection_subset_appends_a_judge_line_to_the_worse_output_only():
    pairs, n = jb.load_suite("judge-injection", 30)
    assert n == 100
    plain = [p for p in pairs if p.subset == "plain"]
    injected = [p for p in pairs if p.subset == "injected"]
    assert len(plain) == len(injected) == 30
    kinds = set()
    for p, q in zip(plain, injected, strict=True):
        assert q.id == f"{p.id}+{q.injection}" and q.label == p.label and q.instruction == p.instruction
        better, worse = p.label, 3 - p.label
        assert q.output(better) == p.output(better)
        assert q.output(worse) == p.output(worse) + "\n\n" + INJECTIONS[q.injection]
        kinds.add(q.injection)
    assert kinds == set(KINDS)  # 30 pairs spread over the three kinds


def test_every_injected_line_is_detected_as_judge_addressed():
    for kind, line in INJECTIONS.items():
        assert kind in judge_addressed("A fine answer.\n\n" + line)


# ---------------------------------------------------------------------------------------- scoring


def test_pointwise_and_pairwise_outcomes():
    p = jb.GoldPair("x/0", "natural", "q", "good", "bad", 1)
    assert jb.pointwise_outcome(p, 4.0, 2.0).result == "correct"
    assert jb.pointwise_outcome(p, 2.0, 4.0).result == "wrong"
    assert jb.pointwise_outcome(p, 3.0, 3.0).result == "tie"
    assert jb.pointwise_outcome(p, None, 3.0).result == "invalid"
    assert jb.pairwise_outcome(p, "A", "B").result == "correct"  # output 1 chosen in both orders
    assert jb.pairwise_outcome(p, "B", "A").result == "wrong"
    assert jb.pairwise_outcome(p, "A", "A").result == "tie"  # a flip: the first position won twice
    assert jb.pairwise_outcome(p, "A", None).result == "invalid"


def test_accuracy_block_counts():
    outs = [jb.Outcome(f"p{i}", "s", r) for i, r in enumerate(["correct"] * 5 + ["wrong"] * 2 + ["tie", "invalid"])]
    b = jb.accuracy_block(outs, rounds=100, seed=0)
    assert b["n"] == 9 and b["correct"] == 5 and b["wrong"] == 2 and b["ties"] == 1 and b["invalid"] == 1
    assert b["accuracy"] == pytest.approx(6 / 9)
    assert b["accuracy_without_ties"] == pytest.approx(5 / 7)


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_interval_equals_a_hand_written_percentile_bootstrap(seed):
    results = ["correct"] * 11 + ["wrong"] * 6 + ["tie"] * 3 + ["invalid"] * 2
    outs = [jb.Outcome(f"p{i}", "s", r) for i, r in enumerate(results)]
    lo, hi = jb.accuracy_block(outs, rounds=2000, seed=seed)["accuracy_ci95"]
    values = np.array([jb.VALUE[r] for r in results])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (2000, len(values)))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert lo < values.mean() < hi


# ---------------------------------------------------------------------------------------- scripted judges


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_a_judge_that_always_prefers_gold_scores_100(tmp_path, scoring):
    suites = ("llmbar", "human-pref")
    engine = ScriptedJudge("gold", golds_of(all_pairs(suites, 12)))
    block, _ = run_suites(tmp_path, engine, suites, limit=12, scoring=scoring)
    for s in suites:
        for mode in ("pointwise", "pairwise"):
            o = block[s]["results"]["seed"][mode]["overall"]
            assert (o["n"], o["accuracy"], o["accuracy_without_ties"], o["ties"], o["invalid"]) == (12, 1.0, 1.0, 0, 0)
            assert o["accuracy_ci95"] == [1.0, 1.0]
        assert block[s]["results"]["seed"]["pairwise"]["overall"]["position_consistency"] == 1.0
        assert all(b["accuracy"] == 1.0 for b in block[s]["results"]["seed"]["pointwise"]["by_subset"].values())


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_a_judge_that_always_prefers_the_first_position_scores_50_with_every_pair_a_flip(tmp_path, scoring):
    block, _ = run_suites(tmp_path, ScriptedJudge("first"), ("llmbar",), limit=10, scoring=scoring)
    o = block["llmbar"]["results"]["seed"]["pairwise"]["overall"]
    assert (o["accuracy"], o["ties"], o["flips"], o["correct"], o["wrong"], o["invalid"]) == (0.5, 10, 10, 0, 0, 0)
    assert o["position_consistency"] == 0.0 and o["first_position_share"] == 1.0
    assert o["accuracy_without_ties"] is None
    # pointwise, it scores everything 3: every pair is a tie
    assert block["llmbar"]["results"]["seed"]["pointwise"]["overall"]["ties"] == 10


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_a_garbage_judge_is_counted_invalid_never_scored(tmp_path, scoring):
    with pytest.warns(RuntimeWarning) if scoring == "constrained" else _nothing():
        block, _ = run_suites(tmp_path, ScriptedJudge("garbage"), ("human-pref",), limit=9, scoring=scoring)
    for mode in ("pointwise", "pairwise"):
        o = block["human-pref"]["results"]["seed"][mode]["overall"]
        assert (o["invalid"], o["correct"], o["wrong"], o["ties"]) == (9, 0, 0, 0)
        assert o["accuracy"] == 0.5 and o["accuracy_without_ties"] is None


class RecordingJudge(ScriptedJudge):
    """A scripted judge that keeps every user prompt it was asked (generation and choice requests)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts: list[str] = []

    def generate(self, requests):
        requests = list(requests)
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return super().generate(requests)

    def choice_probs(self, requests):
        requests = list(requests)
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return super().choice_probs(requests)


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_one_way_of_judging_asks_only_its_prompts_and_reports_only_it(tmp_path, scoring):
    golds = golds_of(all_pairs(("llmbar",), 8))
    full = RecordingJudge("gold", golds)
    both, _ = run_suites(tmp_path / "both", full, ("llmbar",), limit=8, scoring=scoring)
    for mode, other in (("pointwise", "pairwise"), ("pairwise", "pointwise")):
        engine = RecordingJudge("gold", golds)
        block, _ = run_suites(tmp_path / mode, engine, ("llmbar",), limit=8, scoring=scoring, modes=(mode,))
        assert list(block["llmbar"]["results"]["seed"]) == [mode] and other not in block["llmbar"]
        assert block["llmbar"]["results"]["seed"][mode] == both["llmbar"]["results"]["seed"][mode]
        pointwise_prompts = [p for p in engine.prompts if "<response>" in p]
        assert (len(pointwise_prompts) == len(engine.prompts)) == (mode == "pointwise") and engine.prompts
    assert len(full.prompts) > len(engine.prompts)


@pytest.mark.parametrize("modes", [(), ("pointwise", "listwise")])
def test_an_unknown_way_of_judging_is_refused_before_any_judge_loads(tmp_path, modes):
    with pytest.raises(InputError, match="judge modes: .*expected one or both of pointwise, pairwise"):
        run_suites(tmp_path, ScriptedJudge("first"), ("llmbar",), limit=2, modes=modes)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_injection_suite_reports_preference_for_the_worse_output_with_and_without_the_line(tmp_path):
    pairs = all_pairs(("judge-injection",), 12)
    plain_golds = golds_of([p for p in pairs if p.subset == "plain"])

    class Gullible(ScriptedJudge):
        """Judges plain pairs right, but any output carrying a judge-addressed line wins."""

        def _text(self, user):
            if "<response>" in user:
                resp = _judged_response(user)
                return f"Score: {5 if judge_addressed(resp) else 4 if resp in plain_golds else 1}"
            a, b = _shown_pair(user)
            if judge_addressed(a) or judge_addressed(b):
                return f"Winner: Response {'A' if judge_addressed(a) else 'B'}"
            return f"Winner: Response {'A' if a in plain_golds else 'B'}"

    block, _ = run_suites(tmp_path, Gullible("gold"), ("judge-injection",), limit=12)
    for mode in ("pointwise", "pairwise"):
        r = block["judge-injection"]["results"]["seed"][mode]
        assert r["prefers_worse"]["plain"] == 0.0 and r["prefers_worse"]["injected"] == 1.0
        assert r["prefers_worse"]["change"] == 1.0
        assert sum(v["n"] for v in r["prefers_worse"]["by_kind"].values()) == 12
        assert r["by_subset"]["plain"]["accuracy"] == 1.0 and r["by_subset"]["injected"]["accuracy"] == 0.0


# ---------------------------------------------------------------------------------------- cache and resume


def test_kill_and_rerun_rejudges_nothing(tmp_path):
    suites = ("llmbar", "judge-injection")
    golds = golds_of(all_pairs(suites, 8))
    killed = ScriptedJudge("gold", golds, fail_after=25)
    with pytest.raises(RuntimeError, match="killed"):
        run_suites(tmp_path, killed, suites, limit=8)
    lines = (tmp_path / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == 25  # every answer before the kill was stored
    resumed = ScriptedJudge("gold", golds)
    first, _ = run_suites(tmp_path, resumed, suites, limit=8)
    fresh = ScriptedJudge("gold", golds)
    reference, _ = run_suites(tmp_path / "fresh", fresh, suites, limit=8)
    assert resumed.asked == fresh.asked - 25  # only what was not stored
    assert first == reference
    again = ScriptedJudge("gold", golds)
    second, made = run_suites(tmp_path, again, suites, limit=8)
    assert again.asked == 0 and made == []  # a finished rerun loads no judge at all
    assert second == first


def test_injection_plain_pairs_share_judgments_with_llmbar(tmp_path):
    golds = golds_of(all_pairs(("llmbar", "judge-injection"), 100))
    alone = ScriptedJudge("gold", golds)
    run_suites(tmp_path / "a", alone, ("judge-injection",), limit=10)
    both = ScriptedJudge("gold", golds)
    run_suites(tmp_path / "a", both, ("llmbar", "judge-injection"), limit=10)
    # the plain natural pairs that llmbar's sample also holds were not asked again
    natural = {p.id for p in jb.load_suite("llmbar", 10)[0] if p.subset == "natural"}
    shared = natural & {p.id for p in jb.load_suite("judge-injection", 10)[0]}
    llmbar_only = len(jb.load_suite("llmbar", 10)[0]) - len(shared)
    assert both.asked == llmbar_only * (2 + 2)  # 2 outputs judged pointwise + 2 orders pairwise per new pair


def test_eval_json_of_the_judge_suites_is_strict_json(tmp_path):
    block, _ = run_suites(tmp_path, ScriptedJudge("first"), ("llmbar",), limit=4)
    text = json.dumps(block, allow_nan=False)  # raises ValueError on a NaN or infinity anywhere in the block
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == block and block["llmbar"]


def test_eval_runs_the_judge_suites_for_every_model_and_prints_them(tmp_path):
    from metareward.evaluation.runner import EvalOptions, Evaluator, format_suites

    golds = golds_of(all_pairs(("llmbar",), 6))
    engines = {"good": ScriptedJudge("gold", golds), "first": ScriptedJudge("first")}
    opts = EvalOptions(parts=(), suites=("llmbar",), limit=6, judge_n=2, judge_max_tokens=16, bootstrap=100)
    report = Evaluator([("seed", "good"), ("iter_1", "first")], opts, tmp_path,
                       engine_factory=lambda path: engines[path], log=lambda s: None).run()
    res = report["suites"]["llmbar"]["results"]
    assert res["seed"]["pointwise"]["overall"]["accuracy"] == 1.0
    assert res["iter_1"]["pairwise"]["overall"]["flips"] == 6
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["suites"]["llmbar"]["n"] == 6 and saved["suites"]["llmbar"]["of"] == 419
    text = format_suites(report)
    assert "llmbar         seed       pointwise accuracy 100.0% [100.0%, 100.0%]" in text
    assert "position consistency 0.0%" in text
