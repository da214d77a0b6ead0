"""`metareward pairs`: what-if pair selection on stored records (metareward.whatif), no model loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fakes import FakeEngine
from test_loop import FakeTrainRunner, make_cfg, run

from metareward import cli
from metareward.config import IterationConfig, RunConfig, load_config
from metareward.errors import InputError
from metareward.layout import PAIR_ARTIFACTS, RunLayout
from metareward.loop import STAGES, Iteration
from metareward.records import Judgment, Prompt, Response
from metareward.whatif import PairSetting, open_iteration, pairs_for, serialize, stage_keys, with_setting


@pytest.fixture(scope="module", params=["free_text", "constrained"])
def finished(request, tmp_path_factory):
    cfg = make_cfg(tmp_path_factory.mktemp(request.param))
    cfg.judge.scoring = cfg.meta_judge.scoring = request.param
    cfg.iterations[0].actor_max_chosen_length = 60
    cfg.iterations[1].judge_max_chosen_length = 200
    run(cfg, FakeEngine())
    return cfg


def test_the_runs_own_setting_reproduces_the_stored_pairs_byte_for_byte(finished):
    for i in (1, 2):
        it = open_iteration(finished.run_dir, i)
        out = pairs_for(it)
        for name in PAIR_ARTIFACTS:
            stored = RunLayout(finished.run_dir).iteration(i).artifact(name).read_bytes()
            assert serialize(out.artifacts[name]).encode() == stored, (i, name)
        assert out.artifacts["actor_pairs"] and out.artifacts["judge_pairs"]


def test_cli_lists_every_setting_and_marks_the_runs_own(finished, capsys):
    assert cli.main(["pairs", finished.run_dir, "--iteration", "2", "--rho", "0,0.32,0.4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["settings"]
    assert [r["setting"]["rho"] for r in rows] == [0.0, 0.32, 0.4]
    assert [("same_as_stored" in r) for r in rows] == [False, True, False]
    assert rows[1]["same_as_stored"] is True
    manifest = json.loads(RunLayout(finished.run_dir).iteration(2).manifest.read_text())["stages"]["pairs"]
    assert rows[1]["actor"]["pairs"] == manifest["actor_pairs"] and rows[1]["actor"]["skipped"] == manifest["actor_skipped"]
    assert rows[1]["judge"]["skipped"] == manifest["judge_skipped"]
    for r in rows:  # every prompt has a pair or one skip reason
        assert r["actor"]["pairs"] + sum(r["actor"]["skipped"].values()) == 5
        assert r["judge"]["pairs"] + sum(r["judge"]["skipped"].values()) == 5
    assert cli.main(["pairs", finished.run_dir, "--iteration", "2", "--rho", "0.32"]) == 0
    text = capsys.readouterr().out
    assert "(the run's own: same as the stored pairs)" in text and "  actor: " in text and "  judge: " in text


def test_a_judge_length_limit_below_every_judgment_drops_every_judge_pair(finished):
    it = open_iteration(finished.run_dir, 2)
    free = pairs_for(it, PairSetting(0.32, None, None))
    capped = pairs_for(it, PairSetting(0.32, None, 1))
    assert capped.artifacts["judge_pairs"] == []
    assert capped.extra["judge_skipped"]["chosen_too_long"] >= len(free.artifacts["judge_pairs"]) > 0
    assert capped.artifacts["actor_pairs"] == free.artifacts["actor_pairs"]  # actor pairs do not read it


def _hand_iteration(rho: float, actor_max: int | None) -> Iteration:
    """Prompt a: r0 scores 5 (40 chars), r1 4.5 (20), r2 1 (30), r3 0.5 (10); prompt b: two equal scores."""
    cfg = RunConfig(prompts="unused", mode="self-rewarding")
    cfg.iterations = [IterationConfig(prompts=2, rho=rho, actor_max_chosen_length=actor_max)]
    prompts = [Prompt("a", "Question a?"), Prompt("b", "Question b?")]
    lengths = {"a": [(5.0, 40), (4.5, 20), (1.0, 30), (0.5, 10)], "b": [(3.0, 12), (3.0, 13)]}
    responses, judgments = [], []
    for pid, rs in lengths.items():
        for k, (score, n) in enumerate(rs):
            r = Response(id=f"{pid}/r{k}", prompt_id=pid, index=k, text=chr(ord("a") + k) * n)
            responses.append(r)
            judgments += [Judgment(id=f"{r.id}/j{j}", response_id=r.id, prompt_id=pid, index=j, text="t", score=score)
                          for j in range(2)]
    return Iteration(index=1, cfg=cfg, store=None, prompts=prompts, model_in="", runner=None,  # type: ignore[arg-type]
                     responses=responses, judgments=judgments)


@pytest.mark.parametrize("rho, actor_max, expected, skipped", [
    (0.0, None, ("a/r0", "a/r3"), {"all_scores_equal": 1}),  # argmax / argmin
    (0.2, None, ("a/r1", "a/r2"), {"all_scores_equal": 1}),  # top tier >= 4.1: shortest r1; bottom <= 1.4: longest r2
    (0.0, 30, None, {"all_scores_equal": 1, "chosen_too_long": 1}),  # r0 has 40 characters
    (0.2, 30, ("a/r1", "a/r2"), {"all_scores_equal": 1}),  # r1 has 20
])
def test_hand_computed_actor_pairs(rho, actor_max, expected, skipped):
    base = _hand_iteration(0.0, None)
    out = pairs_for(base, PairSetting(rho, actor_max, None))
    got = [(p.chosen_id, p.rejected_id) for p in out.artifacts["actor_pairs"]]
    assert got == ([expected] if expected else [])
    assert out.extra["actor_skipped"] == skipped
    assert out.artifacts["judge_pairs"] == []
    assert with_setting(base, PairSetting(rho, actor_max, None)).plan.rho == rho and base.plan.rho == 0.0


class NoTrainRunner(FakeTrainRunner):
    stages = tuple(s for s in STAGES if s.name != "train")


def test_write_stores_one_setting_and_run_trains_on_it(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations = cfg.iterations[:1]
    NoTrainRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()
    layout = RunLayout(cfg.run_dir)
    assert cli.main(["pairs", cfg.run_dir, "--iteration", "1", "--rho", "0.4", "--write"]) == 0
    setting = PairSetting(0.4, None, None)
    it = open_iteration(cfg.run_dir, 1)
    expected = pairs_for(it)  # the run directory's config now says rho 0.4
    assert it.plan.rho == 0.4
    before = pairs_for(it, PairSetting(0.0, None, None))
    assert serialize(before.artifacts["actor_pairs"]) != serialize(expected.artifacts["actor_pairs"])
    for name in PAIR_ARTIFACTS:
        assert layout.iteration(1).artifact(name).read_text() == serialize(expected.artifacts[name])
    manifest = json.loads(layout.iteration(1).manifest.read_text())
    assert manifest["stages"]["pairs"]["settings"] == stage_keys(with_setting(it, setting))["pairs"]
    assert yaml.safe_load(layout.config.read_text())["iterations"][0]["rho"] == 0.4
    resumed = load_config(layout.config)
    # the config it was started with still says rho 0: run refuses rather than mixing
    with pytest.raises(InputError, match="stage 'pairs' already ran with different settings"):
        run(cfg, FakeEngine())
    # the run directory's config resumes into DPO on the written pairs
    run(resumed, FakeEngine())
    trained = json.loads((layout.model_of(1) / "pairs.json").read_text())
    assert trained == [p.id for name in PAIR_ARTIFACTS for p in expected.artifacts[name]]


def test_write_refuses_after_training_and_needs_one_setting(finished, tmp_path):
    with pytest.raises(InputError, match="has already trained on its pairs"):
        cli_main_raising(["pairs", finished.run_dir, "--iteration", "2", "--rho", "0.1", "--write"])
    with pytest.raises(InputError, match="give one setting"):
        cli_main_raising(["pairs", finished.run_dir, "--iteration", "2", "--rho", "0.1,0.2", "--write"])
    with pytest.raises(InputError, match="outside"):
        cli_main_raising(["pairs", finished.run_dir, "--iteration", "2", "--rho", "0.7"])
    with pytest.raises(InputError, match="not an iteration"):
        cli_main_raising(["pairs", finished.run_dir, "--iteration", "3"])
    with pytest.raises(InputError, match="not a run directory"):
        cli_main_raising(["pairs", str(tmp_path), "--iteration", "1"])


def cli_main_raising(argv: list[str]) -> None:
    args = cli.build_parser(argv[0]).parse_args(argv)
    args.func(args)


def test_an_iteration_not_yet_judged_is_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations = cfg.iterations[:1]

    class ActorOnly(FakeTrainRunner):
        stages = tuple(s for s in STAGES if s.name in ("prompts", "actor"))

    ActorOnly(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()
    with pytest.raises(InputError, match="has not finished judge, meta_judge"):
        open_iteration(Path(cfg.run_dir), 1)
