"""Config loading: defaults from the paper, typed fields, errors that name the file and field."""

from __future__ import annotations

import pytest

from metareward.config import EngineConfig, RunConfig, load_config, parse_override, settings_hash
from metareward.errors import InputError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load(tmp_path):
    tiny = load_config("configs/tiny-cpu.yaml")
    assert tiny.model == "smollm2-135m" and len(tiny.iterations) == 2
    assert tiny.judge.scoring == "constrained" and tiny.iterations[1].rho == 0.32
    paper = load_config("configs/paper-llama3-8b.yaml")
    assert (paper.actor.k, paper.judge.n) == (7, 11)
    assert [it.rho for it in paper.iterations] == [0.0, 0.32, 0.32, 0.4]
    assert [it.train_judge for it in paper.iterations] == [True, True, False, False]
    assert [it.prompts for it in paper.iterations] == [5000] * 4
    assert paper.iterations[0].actor_max_chosen_length == 2500
    assert [it.judge_max_chosen_length for it in paper.iterations[:2]] == [1100, 1000]
    assert (paper.training.learning_rate, paper.training.beta) == (5e-6, 0.1)
    assert paper.training.batch_size * paper.training.gradient_accumulation == 32


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.actor.k, cfg.actor.temperature, cfg.actor.top_p) == (7, 0.8, 0.95)
    assert cfg.judge.n == 11 and cfg.judge.scoring == "free_text"
    assert cfg.mode == "meta-rewarding"


@pytest.mark.parametrize(
    "text, message",
    [
        ("prompts: p.txt\niterations:\n  - rho: 0.7\n", "c.yaml: iterations[0].rho: must be in [0, 0.5]"),
        ("prompts: p.txt\nactor:\n  k: seven\n", "c.yaml: actor.k: expected an integer, got 'seven'"),
        ("prompts: p.txt\nactor:\n  kk: 3\n", "c.yaml: actor.kk: unknown field"),
        ("prompts: p.txt\njudge:\n  scoring: regex\n", "c.yaml: judge.scoring: must be one of ['free_text', 'constrained']"),
        ("prompts: p.txt\nmode: selfish\n", "c.yaml: mode: must be one of"),
        ("prompts: p.txt\nactor:\n  top_p: 0\n", "c.yaml: actor.top_p: must be in (0, 1]"),
        ("prompts: p.txt\nactor:\n  k: 1\n", "c.yaml: actor.k: need at least 2 responses"),
        ("prompts: p.txt\niterations: []\n", "c.yaml: iterations: need at least one iteration"),
        ("prompts: p.txt\ntraining:\n  beta: true\n", "c.yaml: training.beta: expected a number, got True"),
        ("prompts: p.txt\niterations:\n  - actor_max_chosen_length: -5\n",
         "c.yaml: iterations[0].actor_max_chosen_length: must be > 0 or null"),
        ("model: x\n", "c.yaml: prompts: a prompts file is required"),
        ("prompts: [unclosed\n", "c.yaml:2: invalid YAML"),
        ("prompts: p.txt\nengine:\n  batch_size: 0\n", "c.yaml: engine.batch_size: must be >= 1, got 0"),
        ("prompts: p.txt\nengine:\n  name: tgi\n", "c.yaml: engine.name: must be one of ['hf', 'vllm', 'openai']"),
        ("prompts: p.txt\nengine:\n  hf:\n    batch_size: 8\n", "c.yaml: engine.hf: unknown field"),
    ],
)
def test_bad_values_name_file_and_field(tmp_path, text, message):
    with pytest.raises(InputError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_file():
    with pytest.raises(InputError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_overrides_with_list_indices(tmp_path):
    path = write(tmp_path, "prompts: p.txt\niterations:\n  - rho: 0.1\n  - rho: 0.2\n")
    cfg = load_config(path, dict([parse_override("iterations.1.rho=0.3"), parse_override("engine.threads=1")]))
    assert cfg.iterations[1].rho == 0.3 and cfg.engine.threads == 1
    with pytest.raises(InputError, match="has no item 5"):
        load_config(path, {"iterations.5.rho": 0.1})
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_override("engine.threads")


def test_hash_ignores_run_dir_but_not_settings():
    a, b = RunConfig(run_dir="x"), RunConfig(run_dir="y")
    assert a.hash() == b.hash()
    b.judge.n = 3
    assert a.hash() != b.hash()


def test_self_rewarding_never_trains_the_judge():
    cfg = RunConfig(mode="self-rewarding")
    assert cfg.iterations[0].train_judge and not cfg.judge_trained(1)
    assert RunConfig().judge_trained(1)


def test_engine_settings_are_grouped_by_the_engines_that_read_them():
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in EngineConfig.__dataclass_fields__:
        if name != "name":
            groups.setdefault(EngineConfig.applies_to(name), []).append(name)
    assert groups == {
        ("hf", "vllm", "openai"): ["chunk_size"],
        ("hf", "vllm"): ["device", "dtype", "threads"],
        ("hf",): ["batch_size", "compile", "fused_decoder", "decode_kernel"],
        ("vllm",): ["tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "ray_address"],
        ("openai",): ["base_url", "api_key_env", "served_model", "max_concurrency", "request_timeout", "max_retries",
                      "server_command", "server_start_timeout"],
    }
    with pytest.raises(KeyError, match="engine.name: not an engine setting"):
        EngineConfig.applies_to("name")


def test_engine_settings_of_the_selected_engine():
    assert EngineConfig(name="openai", base_url="http://h/v1").settings() == {
        "chunk_size": 256, "base_url": "http://h/v1", "api_key_env": "OPENAI_API_KEY", "served_model": None,
        "max_concurrency": 16, "request_timeout": 120.0, "max_retries": 6, "server_command": None,
        "server_start_timeout": 900.0,
    }
    assert sorted(EngineConfig(name="vllm").settings()) == [
        "chunk_size", "data_parallel_size", "device", "dtype", "gpu_memory_utilization", "ray_address",
        "tensor_parallel_size", "threads"]


def test_hashes_are_those_of_the_flat_config_before_the_grouping():
    """Regrouping the engine fields must not change a run's hashes (a run resumes by them): values
    computed with the config module as it was before (the default and tiny values since engine.chunk_size
    counts sequences: 256 by default, 128 in the tiny config; the stages' resume keys do not include it)."""
    assert RunConfig().hash() == "0c1ba97e9863aa85"
    tiny = load_config("configs/tiny-cpu.yaml")
    assert (tiny.hash(), settings_hash(tiny.engine)) == ("af8678d77644239e", "a5e76469150dc8f2")
    paper = load_config("configs/paper-llama3-8b.yaml")
    assert (paper.hash(), settings_hash(paper.engine)) == ("c8f0e36171e91783", "cfec1259e9ca92fb")
