"""``prompts generate`` and ``eft build`` take any engine, through ``make_engine`` only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import metareward
from metareward.cli import main
from metareward.config import EngineConfig

PACKAGE = Path(metareward.__file__).parent


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Replace make_engine and the two generators: record the engine config and model each command
    asks for (the generators call the engine factory, as the real ones do when work remains)."""
    import metareward.eft
    import metareward.engines
    import metareward.prompt_pool

    seen: list[tuple[EngineConfig, str]] = []
    monkeypatch.setattr(metareward.engines, "make_engine", lambda cfg, path, log_dir=None: seen.append((cfg, path)))

    def fake_pool(out, engine, settings, seeds=None, include_seeds=False):
        engine()
        return {"dropped": {}, "generated": 0, "kept": 0, "written": 0, "complete": True, "target": 0}

    def fake_eft(input_path, out_dir, engine, settings):
        engine()
        return dict.fromkeys(("prompts_agreeing", "prompts", "prompts_disagreeing", "prompts_unscored", "train",
                              "eval"), 0)

    monkeypatch.setattr(metareward.prompt_pool, "generate_pool", fake_pool)
    monkeypatch.setattr(metareward.eft, "build_eft", fake_eft)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return seen, str(model)


def test_prompts_generate_on_an_openai_server(calls, tmp_path):
    seen, model = calls
    assert main(["prompts", "generate", "--out", str(tmp_path / "pool.jsonl"), "--model", model, "--engine", "openai",
                 "--engine-set", "base_url=http://host:9/v1", "--engine-set", "engine.max_concurrency=4"]) == 0
    (cfg, path), = seen
    assert (cfg.name, cfg.base_url, cfg.max_concurrency, path) == ("openai", "http://host:9/v1", 4, model)


def test_eft_build_on_vllm_with_a_run_configs_engine_section(calls, tmp_path):
    seen, model = calls
    assert main(["eft", "build", "ranked.jsonl", "--out", str(tmp_path / "eft"), "--model", model,
                 "--engine-config", "configs/tiny-cpu.yaml", "--engine", "vllm", "--threads", "1"]) == 0
    (cfg, _), = seen
    # the file's settings (tiny-cpu: cpu, batch 128, chunk 128), then the flags (engine, threads)
    assert (cfg.name, cfg.device, cfg.batch_size, cfg.chunk_size, cfg.threads) == ("vllm", "cpu", 128, 128, 1)


def test_default_engine_is_hf_with_the_default_settings(calls, tmp_path):
    seen, model = calls
    assert main(["prompts", "generate", "--out", str(tmp_path / "pool.jsonl"), "--model", model]) == 0
    assert main(["eft", "build", "ranked.jsonl", "--out", str(tmp_path / "eft"), "--model", model]) == 0
    assert [cfg for cfg, _ in seen] == [EngineConfig(), EngineConfig()]


@pytest.mark.parametrize("args, message", [
    (["--engine-set", "batch_size=0"], "--engine-set 'batch_size=0': engine.batch_size: must be >= 1, got 0"),
    (["--engine-set", "hf.batch_size=8"], "--engine-set 'hf.batch_size=8': expected an engine setting"),
    (["--engine-set", "batch=8"], "--engine-set 'batch=8': engine.batch: unknown field"),
    (["--batch-size", "0"], "--batch-size 0: engine.batch_size: must be >= 1, got 0"),
    (["--engine-set", "threads=2", "--threads", "-1"], "--threads -1: engine.threads: must be >= 0, got -1"),
    (["--engine-config", "no/such.yaml"], "no/such.yaml: config file not found"),
])
def test_bad_engine_options_name_the_option_or_field(calls, tmp_path, capsys, args, message):
    _, model = calls
    assert main(["prompts", "generate", "--out", str(tmp_path / "pool.jsonl"), "--model", model, *args]) == 2
    assert message in capsys.readouterr().err


def test_engine_config_file_errors_name_file_and_field(calls, tmp_path, capsys):
    _, model = calls
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  name: vllm\n  threads: many\n")
    assert main(["eft", "build", "ranked.jsonl", "--out", str(tmp_path / "eft"), "--model", model,
                 "--engine-config", str(bad)]) == 2
    assert f"{bad}: engine.threads: expected an integer, got 'many'" in capsys.readouterr().err


def test_commands_get_engines_only_from_make_engine():
    """No command module imports an engine class or an engine module other than ``metareward.engines``
    itself (make_engine) and its option helpers."""
    allowed = {"metareward.engines", "metareward.engines.options", "metareward.engines.base"}
    for path in sorted((PACKAGE / "commands").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metareward.engines"):
                assert node.module in allowed, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("metareward.engines.") for a in node.names), path.name


@pytest.fixture
def eval_engine(monkeypatch, tmp_path):
    """``metareward eval`` with the evaluator replaced: returns what engine config each call asked for."""
    import metareward.commands.eval as eval_command

    seen: list[EngineConfig] = []

    class FakeEvaluator:
        def __init__(self, models, opts, out):
            seen.append(opts.engine)

        def run(self):
            return {}

    monkeypatch.setattr(eval_command, "Evaluator", FakeEvaluator)
    monkeypatch.setattr(eval_command, "format_table", lambda report: "")
    return seen


def test_eval_takes_the_same_engine_options(eval_engine, tmp_path):
    from metareward.config import dump_config, load_config

    run_dir = tmp_path / "run"
    dump_config(load_config("configs/tiny-cpu.yaml", {"run_dir": str(run_dir)}), run_dir / "config.yaml")
    assert main(["eval", "--models", "m=smollm2-135m", "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", "--run-dir", str(run_dir), "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", "--run-dir", str(run_dir), "--out", str(tmp_path / "o"), "--engine", "openai",
                 "--engine-set", "base_url=http://host:9/v1", "--threads", "1", "--dtype", "bfloat16"]) == 0
    default, run, flags = eval_engine
    assert default == EngineConfig()
    # the run's engine section (tiny-cpu: cpu, batch 128, chunk 128), then the options over it
    assert (run.name, run.device, run.batch_size, run.chunk_size, run.threads) == ("hf", "cpu", 128, 128, 2)
    assert (flags.name, flags.base_url, flags.threads, flags.dtype, flags.batch_size) == (
        "openai", "http://host:9/v1", 1, "bfloat16", 128)


def test_eval_engine_errors_name_the_option(eval_engine, tmp_path, capsys):
    assert main(["eval", "--models", "m=smollm2-135m", "--out", str(tmp_path / "o"), "--engine-set", "max_concurrency=0"]) == 2
    assert "--engine-set 'max_concurrency=0': engine.max_concurrency: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: an engine that does not exist
        main(["eval", "--models", "m=smollm2-135m", "--engine", "tgi"])
    assert eval_engine == []
