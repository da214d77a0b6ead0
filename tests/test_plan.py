"""The compute planner (metareward.plan): its counts against a real (fake-engine) run's manifests, its
bounds, its FLOP model, and the machine checks of ``run --check``."""

from __future__ import annotations

import json
import shutil

import pytest
from fakes import FakeEngine
from test_loop import make_cfg, run

import metareward.plan as plan_module
from metareward import cli
from metareward.config import IterationConfig
from metareward.layout import RunLayout
from metareward.plan import make_plan
from metareward.plan.shape import ModelShape, TokenCounter
from metareward.plan.work import draw_prompts
from metareward.pool import load_prompt_pool
from metareward.records import Prompt, Response, read_jsonl
from metareward.templates import judge_prompt, meta_judge_prompt

SMOLLM2 = ModelShape.from_config("smollm2-135m", {
    "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}, "test")
CHARS = TokenCounter()  # 4 characters per token, 8 tokens of chat template: exact arithmetic without a tokenizer


def plan_of(cfg, **kw):
    return make_plan(cfg, tokens=CHARS, shape=SMOLLM2, machine_gib=None, **kw)


def manifests(cfg) -> list[dict]:
    layout = RunLayout(cfg.run_dir)
    return [json.loads(layout.iteration(i).manifest.read_text()) for i in layout.iterations()]


@pytest.fixture(scope="module", params=["free_text", "constrained"])
def finished(request, tmp_path_factory):
    """A two-iteration fake-engine run through the real loop, and the plan made before it ran."""
    cfg = make_cfg(tmp_path_factory.mktemp(request.param))
    cfg.judge.scoring = cfg.meta_judge.scoring = request.param
    before = plan_of(cfg)
    run(cfg, FakeEngine())
    return cfg, before


def test_plan_before_the_run_is_exact_where_the_config_decides_and_bounds_the_rest(finished):
    cfg, before = finished
    for i, m in enumerate(manifests(cfg), start=1):
        stages = m["stages"]
        work = {w.stage: w for w in before.iterations[i - 1]}
        assert work["prompts"].count == stages["prompts"]["count"] == 5
        assert work["actor"].requests == 5 and work["actor"].samples == stages["actor"]["samples"] == 20
        assert {"requests", "samples", "prompt_tokens"} <= set(work["actor"].exact)
        for name in ("actor", "judge", "meta_judge", "pairs", "train"):
            assert "count" not in work[name].exact, name  # nothing has run: bounds
            assert work[name].count >= stages[name]["count"], name
        for name in ("actor", "judge", "meta_judge"):
            assert work[name].generated_tokens >= stages[name]["generated_tokens"], name
        # hand-computed bounds: P=5, K=4, N=4, max_tokens 1024 / 512 / 1024 (the defaults)
        assert (work["judge"].samples, work["meta_judge"].count) == (5 * 4 * 4, 5 * 4 * 3)
        assert work["judge"].generated_tokens == 80 * 512 and work["meta_judge"].generated_tokens == 60 * 1024
        assert work["pairs"].count == work["train"].count == 10


def test_prompt_token_bounds_hold(finished):
    """The bounds made before the run against the exact prompt tokens of the stored records."""
    cfg, before = finished
    after = plan_of(cfg)
    for i in (1, 2):
        for stage in ("judge", "meta_judge"):
            exact = after.stage(i, stage)
            assert "prompt_tokens" in exact.exact
            assert before.stage(i, stage).prompt_tokens >= exact.prompt_tokens, (i, stage)


def test_plan_of_the_finished_run_predicts_every_stage_count_from_its_inputs(finished):
    cfg, _ = finished
    after = plan_of(cfg)
    for i, m in enumerate(manifests(cfg), start=1):
        for w in after.iterations[i - 1]:
            assert "count" in w.exact, w.stage
            assert w.count == m["stages"][w.stage]["count"], (i, w.stage)
        judge = after.stage(i, "judge")
        assert judge.requests == m["stages"]["actor"]["count"] and judge.samples == judge.count


def test_only_the_inputs_of_a_stage_make_its_count_exact(finished, tmp_path):
    """The run stopped after the judge: meta-judge and pairs exact, computed with no model."""
    cfg, _ = finished
    shutil.copytree(cfg.run_dir, tmp_path / "run")
    manifest_path = RunLayout(tmp_path / "run").iteration(1).manifest
    manifest = json.loads(manifest_path.read_text())
    full = dict(manifest["stages"])
    for stage in ("meta_judge", "pairs", "train"):
        del manifest["stages"][stage]
    manifest_path.write_text(json.dumps(manifest))
    cfg2 = make_cfg(tmp_path / "cfg")
    cfg2.run_dir, cfg2.judge.scoring, cfg2.meta_judge.scoring = str(tmp_path / "run"), cfg.judge.scoring, cfg.judge.scoring
    p = plan_of(cfg2)
    assert p.stage(1, "meta_judge").count == full["meta_judge"]["count"]
    assert "count" in p.stage(1, "meta_judge").exact
    assert "count" not in p.stage(1, "pairs").exact and p.stage(1, "pairs").count == 10


def test_prompts_and_prompt_tokens_are_the_loops(finished):
    cfg, before = finished
    drawn = draw_prompts(cfg, load_prompt_pool(cfg.prompts))
    for i in (1, 2):
        stored = read_jsonl(RunLayout(cfg.run_dir).iteration(i).artifact("prompts"), Prompt)
        assert [p.id for p in stored] == [p.id for p in drawn[i - 1]]
        assert before.stage(i, "actor").prompt_tokens == sum(max(1, round(len(p.text) / 4)) + 8 for p in stored)
        # bounds by hand: K responses per prompt at actor.max_tokens in the judge prompt; N(N-1) battles
        # per prompt with a response and two judgments at their max_tokens in the meta-judge prompt
        judge_empty = sum(round(len(judge_prompt(p.text, "")) / 4) + 8 for p in stored)
        assert before.stage(i, "judge").prompt_tokens == 4 * judge_empty + 20 * 1024
        meta_empty = sum(round(len(meta_judge_prompt(p.text, "", "", "")) / 4) + 8 for p in stored)
        assert before.stage(i, "meta_judge").prompt_tokens == 12 * meta_empty + 60 * (1024 + 2 * 512)


def test_a_later_iteration_expects_the_lengths_an_earlier_one_measured(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations = cfg.iterations[:1]
    run(cfg, FakeEngine())
    cfg.iterations.append(IterationConfig(prompts=5, rho=0.32))
    p = plan_of(cfg)
    responses = read_jsonl(RunLayout(cfg.run_dir).iteration(1).artifact("responses"), Response)
    mean = sum(r.n_tokens for r in responses) / len(responses)
    actor2 = p.stage(2, "actor")
    assert actor2.expected["generated_tokens"] == pytest.approx(20 * mean)
    assert actor2.expected["count"] == pytest.approx(20 * len(responses) / 20)
    assert actor2.generated_tokens == 20 * 1024  # the bound stays


def test_flop_model_matches_the_benchmarks():
    """Parameters as benchmarks/run.py's flop_model counts them for SmolLM2-135M (body 106,168,320,
    head 28,311,552), and one token's forward with no context."""
    assert SMOLLM2.body_params == 106_168_320 and SMOLLM2.head_params == 28_311_552
    assert SMOLLM2.params == 134_515_008  # SmolLM2-135M's published count (norm weights included)
    assert SMOLLM2.forward_flops(1, 0, 1) == 2 * 106_168_320 + 2 * 28_311_552 + 4 * 30 * 576 * 1
    assert SMOLLM2.kv_bytes_per_token(2) == 2 * 30 * 3 * 64 * 2


def test_a_machine_too_small_is_flagged_with_numbers(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    p = make_plan(cfg, tokens=CHARS, shape=SMOLLM2, machine_gib=0.1)
    assert any(x.startswith("memory: generation needs") and "this machine has 0.1 GiB" in x for x in p.problems)
    monkeypatch.setattr(plan_module, "free_disk_gib", lambda path: 0.01)
    p = make_plan(cfg, tokens=CHARS, shape=SMOLLM2, machine_gib=None)
    (disk,) = p.problems
    assert disk.startswith("disk: the run writes ") and "has 0.0 GiB free" in disk


def test_run_check_prints_the_plan_and_fails_on_a_machine_too_small(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Question {i}?" for i in range(20)) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nprompts: {prompts}\niterations: [{{prompts: 4}}]\n")
    monkeypatch.setattr(plan_module, "load_shape", lambda name: (SMOLLM2, None))
    assert cli.main(["run", str(config), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ok: " in out and "iteration 1: 4 prompts" in out and "problems" not in out
    monkeypatch.setattr(plan_module, "machine_memory_gib", lambda: 0.05)
    assert cli.main(["run", str(config), "--check"]) == 1
    out = capsys.readouterr().out
    assert "memory: generation needs" in out and "this machine has 0.1 GiB" in out
    assert not (tmp_path / "run").exists()


def test_plan_json_round_trips(finished):
    cfg, _ = finished
    data = json.loads(plan_of(cfg).to_json())
    assert [s["stage"] for s in data["iterations"][0]["stages"]] == ["prompts", "actor", "judge", "meta_judge",
                                                                      "pairs", "train"]
    assert data["model"]["parameters"] == 134_515_008


def test_shared_prefixes_are_computed_once_per_group():
    from metareward.config import RunConfig
    from metareward.plan.cost import stage_flops
    from metareward.plan.work import StageWork

    w = StageWork("meta_judge", requests=10, samples=10, prompt_tokens=3000, generated_tokens=500,
                  shared_tokens=100.0, groups=2.0)
    f = SMOLLM2.forward_flops
    assert stage_flops(SMOLLM2, w, RunConfig()) == pytest.approx(
        2 * f(100, 0, 0) + 10 * f(200, 100, 1) + 10 * f(49, 300, 49))
    assert stage_flops(SMOLLM2, w, RunConfig(), shared_prefixes=False) == pytest.approx(
        10 * f(300, 0, 1) + 10 * f(49, 300, 49))


def test_a_pool_not_on_this_machine_is_planned_from_a_stand_in(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.prompts = str(tmp_path / "missing.jsonl")
    stand_in = tmp_path / "three.txt"
    stand_in.write_text("One?\nTwo?\nThree?\n")
    p = make_plan(cfg, tokens=CHARS, shape=SMOLLM2, machine_gib=None, pool_like=str(stand_in))
    assert [w.count for w in p.iterations[0] if w.stage == "prompts"] == [5]
    assert any("3 prompts cycled in place of" in a for a in p.assumptions)


def test_8b_dpo_state_needs_sharding_on_80_gib_gpus(tmp_path):
    from metareward.plan.shape import load_shape

    shape, folder = load_shape("meta-llama/Meta-Llama-3-8B-Instruct")
    assert folder is None and shape.params == 8_030_261_248  # the published parameter count
    cfg = make_cfg(tmp_path)
    cfg.engine.name, cfg.training.precision = "vllm", "bfloat16"
    p = make_plan(cfg, tokens=CHARS, shape=shape, machine_gib=None)
    assert p.memory["train_state_gib"] == pytest.approx(8_030_261_248 * (16 + 2) / 2**30, abs=0.01)
    rows = {(g["gpu"], g["count"]): g["notes"] for g in p.gpus}
    assert any("does not fit" in n for n in rows[("H100-SXM", 1)])
    assert any("FSDP/ZeRO-3 over 8 GPUs" in n for n in rows[("H100-SXM", 8)])
    assert not any("DPO" in n for n in rows[("H200", 1)])  # 135 GiB of state in 141 GiB


def test_rates_measured_in_a_finished_iteration_reproduce_its_seconds(finished):
    cfg, _ = finished
    p = plan_of(cfg)
    last = manifests(cfg)[-1]["stages"]
    for stage in ("actor", "judge", "meta_judge", "train"):
        assert p.rates.source[stage] == "measured in iteration 2 of this run"
        assert p.seconds_here[1][stage] == pytest.approx(last[stage]["seconds"], rel=1e-9), stage
    assert p.stage(2, "actor").expected["generated_tokens"] == last["actor"]["generated_tokens"]


def test_calibration_measures_the_actor_and_keeps_the_benchmarks_stage_ratios(tmp_path, monkeypatch):
    import metareward.engines
    from metareward.plan.cost import Rates
    from metareward.plan.rates import calibrate

    monkeypatch.setattr(metareward.engines, "make_engine", lambda cfg, path, **kw: FakeEngine())
    cfg = make_cfg(tmp_path)
    prompts = draw_prompts(cfg, load_prompt_pool(cfg.prompts))[0]
    bench = Rates({"actor": 100e9, "judge": 50e9, "meta_judge": 200e9, "train": 10e9}, {}, {})
    r = calibrate(cfg, SMOLLM2, "unused", prompts, CHARS, bench)
    actor = r.flop_per_s["actor"]
    assert actor > 0 and r.fixed_s["actor"] >= 0
    assert r.flop_per_s["judge"] == pytest.approx(actor / 2) and r.flop_per_s["train"] == pytest.approx(actor / 10)
    assert r.source["judge"].startswith("calibrated here: 20 samples x 24 tokens of the hf engine")
    alone = calibrate(cfg, SMOLLM2, "unused", prompts, CHARS, None)
    assert set(alone.flop_per_s) == {"actor", "judge", "meta_judge"}  # no DPO rate without a benchmark


def test_run_check_without_the_models_shape_still_validates(tmp_path, monkeypatch, capsys):
    from metareward.errors import InputError

    def no_shape(name):
        raise InputError("model: cannot plan 'x': no config.json on this machine")

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Question {i}?" for i in range(20)) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nprompts: {prompts}\niterations: [{{prompts: 4}}]\n")
    monkeypatch.setattr(plan_module, "load_shape", no_shape)
    assert cli.main(["run", str(config), "--check"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "plan unavailable: model: cannot plan 'x': no config.json on this machine"


def test_a_config_without_a_field_the_plan_needs_is_an_input_error_naming_it():
    from metareward.errors import InputError
    from metareward.plan.shape import ModelShape

    config = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}
    with pytest.raises(InputError, match="m/config.json: field num_attention_heads missing"):
        ModelShape.from_config("m", config, "m/config.json")
    shape = ModelShape.from_config("m", {**config, "num_attention_heads": 4}, "m/config.json")
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (4, 4, 16)
