"""What the DDP config (``configs/accelerate/ddp.yaml``) promises, on this CPU: two processes (gloo) train
to the same losses as one process with the same global batch, and a two-process launch killed after a
checkpoint resumes from it to the same losses and weights as the uninterrupted one-process launch.

The model is a tiny random Llama (2 layers, width 32) with the embedded model's tokenizer, so each
training is a few seconds beyond the launcher's start-up. All runs go through ``launch_training``, the
path the run loop takes when ``training.launcher`` is set: one process is ``python -m
metareward.training.launch``, two are ``accelerate launch --config_file configs/accelerate/ddp.yaml
--num_processes 2`` (``--mixed_precision no``: bf16 is for GPUs). One process with ``batch_size 2`` and two
with ``batch_size 1`` see the same pairs in each optimizer step (accelerate gives process k every k-th
batch of the same seeded order) and DDP averages the gradients, so the losses agree to float rounding.

The kill: a ``sitecustomize`` put on ``PYTHONPATH`` for the first launch ends every process right after
the step-2 checkpoint is written (``os._exit``, as a killed job would), deterministically rather than by
racing a timer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import iteration_with_actor_pairs, save_tiny_llama

from metareward.config import IterationConfig, RunConfig, TrainingConfig
from metareward.store import IterationStore
from metareward.training.launch import launch_training

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DDP = (f"accelerate launch --config_file {ROOT / 'configs/accelerate/ddp.yaml'} --num_processes 2 "
       "--mixed_precision no --dynamo_backend no")
QA = [
    ("What is 2 + 3?", "5.", "It is 7."),
    ("Name a primary color.", "Red.", "Purple is a primary color."),
    ("Say hello in French.", "Bonjour!", "Hola!"),
    ("Name a planet.", "Mars.", "The Moon."),
    ("What is the capital of Italy?", "Rome.", "Milan."),
    ("How many legs has a spider?", "Eight.", "Six."),
    ("Spell cat backwards.", "tac", "cta"),
    ("Is ice cold?", "Yes.", "No, it is hot."),
]
DIE_AFTER_CHECKPOINT = '''
import os
if os.environ.get("METAREWARD_TEST_DIE_AFTER_STEP"):
    import transformers.trainer as _trainer

    _save = _trainer.Trainer._save_checkpoint

    def _save_then_die(self, model, trial):
        _save(self, model, trial)
        if self.state.global_step >= int(os.environ["METAREWARD_TEST_DIE_AFTER_STEP"]):
            self.accelerator.wait_for_everyone()
            os._exit(3)

    _trainer.Trainer._save_checkpoint = _save_then_die
'''


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def prepare_run(run_dir: Path, model: str, batch_size: int, launcher: str, save_steps: int = 1000) -> IterationStore:
    cfg = RunConfig(
        run_dir=str(run_dir),
        prompts=str(run_dir / "unused-prompts.txt"),
        training=TrainingConfig(batch_size=batch_size, gradient_accumulation=1, max_length=64, epochs=1.0,
                                learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0,
                                precision="float32", save_steps=save_steps, launcher=launcher),
        iterations=[IterationConfig(prompts=len(QA))],
    )
    cfg.engine.threads = 1
    return iteration_with_actor_pairs(cfg, model, QA)[0]


def step_losses(store: IterationStore) -> dict[int, float]:
    lines = (store.dir / "train_log.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})  # no step twice
    return {s["step"]: s["loss"] for s in steps}


def weights(store: IterationStore) -> dict[str, torch.Tensor]:
    return load_file(str(store.layout.model / "model.safetensors"))


def test_two_processes_train_like_one_and_resume_from_a_checkpoint(tmp_path, tiny_llama, monkeypatch):
    """One launch of one process; then two processes, killed after the step-2 checkpoint and launched again:
    steps 1-2 of the first two-process launch and steps 3-4 of the resumed one give the one-process run's
    losses and weights (an uninterrupted two-process launch would only add a third start-up)."""
    one = prepare_run(tmp_path / "one", tiny_llama, batch_size=2, launcher="python")
    m1 = launch_training("python", "dpo", one.dir.parent, 1)
    assert m1["processes"] == 1 and m1["steps"] == 4  # 8 pairs, global batch 2
    l1 = step_losses(one)
    assert list(l1) == [1, 2, 3, 4]
    assert l1[1] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference at step 1
    assert len(set(l1.values())) == 4  # every step's loss differs: each step sees new pairs on new weights
    w1 = weights(one)
    w0 = load_file(str(Path(tiny_llama) / "model.safetensors"))
    assert w1.keys() == w0.keys()
    assert all((w1[k] - w0[k]).abs().max() > 1e-4 for k in w0)  # it trained: every tensor moved

    # two processes, killed after the step-2 checkpoint: steps 1-2 as one process's
    two = prepare_run(tmp_path / "two", tiny_llama, batch_size=1, launcher=DDP, save_steps=2)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(DIE_AFTER_CHECKPOINT)
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", str(tmp_path / "inject"))
        m.setenv("METAREWARD_TEST_DIE_AFTER_STEP", "2")
        with pytest.raises(RuntimeError, match="training launcher failed with exit code"):
            launch_training(DDP, "dpo", two.dir.parent, 1)
    work = two.layout.train_work("dpo")
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-2"]
    killed = step_losses(two)
    assert list(killed) == [1, 2] and not two.layout.model.exists()
    for step in killed:
        assert killed[step] == pytest.approx(l1[step], rel=1e-4, abs=1e-5), step

    # launched again: resumes at the checkpoint, ends where one process ended
    m2 = launch_training(DDP, "dpo", two.dir.parent, 1)
    assert m2["processes"] == 2 and m2["steps"] == 4
    l2 = step_losses(two)
    assert list(l2) == [1, 2, 3, 4]
    assert {s: l2[s] for s in (1, 2)} == killed  # the steps before the checkpoint were not redone
    for step in l2:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4, abs=1e-5), step
    w2 = weights(two)
    assert w2.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=k)
    assert not work.exists()  # the checkpoints are removed once the model is saved
