"""The experiment driver: settings per arm, held-out metrics with exact values, the whole with a fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEngine
from test_judge_kinds import write_pool
from test_loop import FakeTrainRunner

from metareward.errors import InputError
from metareward.experiment import heldout as ho
from metareward.experiment.driver import Experiment
from metareward.experiment.report import format_table
from metareward.experiment.settings import ARMS, arm_config, load_experiment
from metareward.stages.chunks import ChunkedPasses

pytest.importorskip("if_verifiable")


def table(all_strict, sat, total, length=None, all_loose=None, sat_loose=None) -> dict[str, np.ndarray]:
    a = np.asarray
    return {"all_strict": a(all_strict, float), "all_loose": a(all_loose or all_strict, float),
            "sat_strict": a(sat, float), "sat_loose": a(sat_loose or sat, float), "total": a(total, float),
            "length": a(length or [10] * len(total), float)}


def test_accuracy_exact():
    t = table([1, 0, 0, 1], [2, 1, 0, 1], [2, 2, 1, 1], length=[10, 20, 30, 40], all_loose=[1, 1, 0, 1],
              sat_loose=[2, 2, 0, 1])
    assert ho.accuracy(t) == {"prompt_strict": 50.0, "prompt_loose": 75.0, "instruction_strict": 66.67,
                              "instruction_loose": 83.33, "mean_length_chars": 25.0, "prompts": 4}


def test_difference_is_paired_and_its_interval_covers_it():
    seed = table([0, 0, 1, 0, 1, 0, 0, 1], [0, 1, 2, 0, 1, 0, 1, 1], [1, 2, 2, 1, 1, 1, 2, 1])
    same = ho.difference(seed, seed, 500)
    assert all(d == {"diff": 0.0, "ci95": [0.0, 0.0]} for d in same.values())  # paired: no spurious width
    better = table([1, 0, 1, 1, 1, 0, 1, 1], [1, 1, 2, 1, 1, 0, 2, 1], [1, 2, 2, 1, 1, 1, 2, 1])
    d = ho.difference(better, seed, 2000)
    assert d["prompt_strict"]["diff"] == 37.5 and d["instruction_strict"]["diff"] == 27.27
    low, high = d["prompt_strict"]["ci95"]
    assert 0 < low <= 37.5 <= high  # the model is never worse on any prompt: every resample >= 0
    assert ho.difference(better, seed, 2000) == d  # seeded


def write_experiment(tmp_path: Path, **extra) -> Path:
    pool = write_pool(tmp_path, n=12)
    data = {"root": str(tmp_path / "exp"), "out": str(tmp_path / "results.json"), "heldout": str(pool),
            "heldout_limit": 5, "bootstrap": 200, "judge_pairs_k": 4,
            "run": {"prompts": str(pool), "actor": {"k": 4}, "judge": {"n": 2, "scoring": "constrained"},
                    "iterations": [{"prompts": 3}, {"prompts": 3}]}, **extra}
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(data))
    return path


def test_arm_configs_and_errors(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, overrides={"control": {"judge.n": 1}}))
    control = arm_config(exp, "control", 3)
    assert (control.judge.kind, control.mode, control.judge.n, control.seed) == ("verifier", "self-rewarding", 1, 3)
    assert control.run_dir == str(tmp_path / "exp" / "control-seed3")
    meta = arm_config(exp, "meta-rewarding", 0)
    assert (meta.judge.kind, meta.mode, meta.judge.n) == ("self", "meta-rewarding", 2) and meta.judge_trained(1)
    assert list(ARMS) == exp.arms
    for extra, message in [({"arms": ["oracle"]}, "unknown arm"), ({"seeds": []}, "seeds"),
                           ({"run": {"prompts": "x.txt", "actor": {"k": 1}}}, r"run \(control\): actor.k")]:
        with pytest.raises(InputError, match=message):
            load_experiment(write_experiment(tmp_path, **extra))


def test_judge_accuracy_counts_every_pair(tmp_path):
    exp = load_experiment(write_experiment(tmp_path))
    e = Experiment(exp, echo=lambda s: None)
    run = ChunkedPasses(engine=FakeEngine, log_path=lambda n: tmp_path / f"{n}.log", chunk_size=8)
    pairs = ho.judge_pairs(e.heldout, run, 4, 32)
    for better, worse in pairs:  # the fake's third sample contains 'dup', the constraint
        assert "dup" in better.text and "dup" not in worse.text
    res = ho.judge_accuracy(e.heldout, pairs, arm_config(exp, "control", 0).judge, run)
    assert res["pairs"] == len(pairs) == 5
    assert res["correct"] + res["wrong"] + res["ties"] + res["unscored"] == 5
    assert res["accuracy"] == round(100 * (res["correct"] + res["ties"] / 2) / (5 - res["unscored"]), 2)


def test_the_experiment_with_a_fake_engine(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, arms=["control", "meta-rewarding"]))
    runners = []

    def runner(cfg):
        runners.append(cfg.judge.kind)
        return FakeTrainRunner(cfg, engine_factory=lambda p: FakeEngine(), echo=lambda s: None)

    results = Experiment(exp, echo=lambda s: None, make_engine=lambda cfg, path: FakeEngine(),
                         runner_factory=runner).run()
    assert runners == ["verifier", "self"]
    assert json.loads(Path(exp.out).read_text()) == results
    assert results["seed_model"]["prompts"] == 5 and "vs_seed" not in results["seed_model"]
    control = results["arms"]["control-seed0"]
    assert [it["iteration"] for it in control["iterations"]] == [1, 2]
    assert "judge.kind: verifier" in control["iterations"][0]["summary"]["meta_judge_skipped"]
    assert set(control["iterations"][0]["vs_seed"]) == set(ho.METRICS)
    assert len(results["loadavg_start"]) == 3 and results["wall_seconds"] >= 0
    lines = format_table(results).splitlines()
    assert len(lines) == 2 + 1 + 2 * 2 and lines[2].startswith("| seed model |")
    # rerun: everything is resumed from the run directories and chunk logs, same results
    again = Experiment(exp, echo=lambda s: None, make_engine=lambda cfg, path: FakeEngine(),
                       runner_factory=runner).run()
    for key in ("seed_model", "arms"):
        strip = lambda d: json.loads(json.dumps(d).replace('"eval_seconds"', '"_"'))  # noqa: E731
        assert strip(again[key]).keys() == strip(results[key]).keys()
    assert again["arms"]["control-seed0"]["iterations"][1]["prompt_strict"] == control["iterations"][1]["prompt_strict"]


def test_an_evaluation_folder_is_not_reused_with_other_settings(tmp_path):
    ho.check_settings(tmp_path / "m", {"answer_max_tokens": 96})
    ho.check_settings(tmp_path / "m", {"answer_max_tokens": 96})  # same settings: reused
    with pytest.raises(InputError, match="evaluated with other settings"):
        ho.check_settings(tmp_path / "m", {"answer_max_tokens": 64})


def test_pair_agreement_counts_pairs_by_constraints_satisfied():
    from metareward.records import PreferencePair
    from metareward.verifiable.constraints import Constraint

    cons = {"a": [Constraint("punctuation:no_comma"), Constraint("keywords:existence", {"keywords": ["river"]})]}

    def pair(chosen, rejected):
        return PreferencePair("actor/a", "actor", "a", "x", chosen, rejected, "a/r0", "a/r1")

    pairs = [pair("the river", "a, b"), pair("a, b", "river"), pair("river, x", "plain"), pair("x", "y")]
    assert ho.pair_agreement(pairs, cons) == {"more": 1, "fewer": 1, "equal": 2}


def test_per_constraint_counts_satisfied_prompts_per_constraint_kind():
    from metareward.records import Prompt
    from metareward.verifiable.constraints import Constraint

    comma, river = Constraint("punctuation:no_comma"), Constraint("keywords:existence", {"keywords": ["river"]})
    heldout = ho.HeldOut([Prompt("a", "Write."), Prompt("b", "Write.")], {"a": [comma, river], "b": [comma]})
    assert ho.per_constraint(heldout, {"a": "the river, flowing", "b": "no commas here"}) == {
        "keywords:existence": {"satisfied": 1, "prompts": 1},
        "punctuation:no_comma": {"satisfied": 1, "prompts": 2},
    }
