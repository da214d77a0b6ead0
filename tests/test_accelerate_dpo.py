"""Multi-process training under ``accelerate launch``: two CPU processes (torchrun + gloo) train one iteration
of a run directory through the loop's ``training.launcher`` path, and the main process alone writes a
complete, changed model folder.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` starts two processes
that the Trainer (``use_cpu``) joins as MULTI_CPU with the gloo backend; accelerate's own ``--cpu`` flag
runs one process unless mpirun is configured.

The model is a tiny random Llama with the embedded model's tokenizer (``train_fixtures.save_tiny_llama``):
what is tested is the launch, the collective save and the folder, which do not depend on the model's size
(the 135M model made each test ~30 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import iteration_with_actor_pairs, save_tiny_llama

from metareward.config import IterationConfig, RunConfig, TrainingConfig, dump_config
from metareward.layout import RunLayout
from metareward.loop import Runner
from metareward.store import IterationStore

pytestmark = pytest.mark.slow
LAUNCHER = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"

QA = [
    ("What is 2 + 3?", "2 + 3 = 5.", "It is 7."),
    ("Name a primary color.", "Red.", "Purple is a primary color."),
    ("Say hello in French.", "Bonjour!", "Hola!"),
    ("Name a planet.", "Mars.", "The Moon."),
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_two_process_dpo_through_the_loop_launcher(tmp_path, tiny_llama):
    model = tiny_llama
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(q for q, _, _ in QA) + "\n")
    cfg = RunConfig(
        run_dir=str(tmp_path / "run"),
        prompts=str(prompts),
        training=TrainingConfig(batch_size=1, gradient_accumulation=1, max_length=256, epochs=1.0,
                                learning_rate=1e-5, precision="float32", save_steps=1000, launcher=LAUNCHER),
        iterations=[IterationConfig(prompts=4)],
    )
    cfg.engine.threads = 1
    run_dir = Path(cfg.run_dir)
    store, pairs = iteration_with_actor_pairs(cfg, model, QA)

    metrics = Runner(cfg, engine_factory=lambda path: None).train(model, pairs, store)

    assert metrics["processes"] == 2
    assert metrics["pairs"] == 4
    assert metrics["steps"] == 2  # 4 pairs / (2 processes x batch 1)
    out = store.layout.model
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not (run_dir / "iter_1" / "model.tmp").exists()
    from safetensors.torch import load_file

    before = load_file(str(Path(model) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
    assert changed  # trained
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_two_process_sft_step_through_the_loop_launcher(tmp_path, tiny_llama):
    """SFT step 0 under the same launcher: two processes, one collective save of a changed model."""
    from metareward.training.sft import SFTConfig

    model = tiny_llama
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": q, "completion": c + "\nScore: 5", "score": 5.0}) + "\n" for q, c, _ in QA
    ))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(q for q, _, _ in QA) + "\n")
    cfg = RunConfig(
        run_dir=str(tmp_path / "run"),
        prompts=str(prompts),
        training=TrainingConfig(precision="float32", launcher=LAUNCHER),
        sft=SFTConfig(data=str(data), learning_rate=1e-4, min_learning_rate=1e-5, max_steps=1, batch_size=1,
                      gradient_accumulation=1, warmup_ratio=0.0, max_length=256, precision="float32"),
    )
    cfg.engine.threads = 1
    runner = Runner(cfg, engine_factory=lambda path: None)
    dump_config(cfg, Path(cfg.run_dir) / "config.yaml")
    out = Path(runner.sft_step(model))
    store = IterationStore(RunLayout(Path(cfg.run_dir)).iteration(0))
    metrics = store.manifest["stages"]["sft"]["metrics"]
    assert metrics["processes"] == 2 and metrics["examples"] == 4 and metrics["steps"] == 1
    assert out == store.layout.model and {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert not out.with_name(out.name + ".tmp").exists()
    from safetensors.torch import load_file

    before = load_file(str(Path(model) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)  # trained
