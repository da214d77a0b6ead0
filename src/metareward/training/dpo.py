"""DPO on the pooled actor + judge pairs, with TRL's DPOTrainer (docs/method.md §4.1).

Assumptions and choices:
* The policy starts from the iteration's starting model and the reference model is that same
  starting model (standard iterative DPO; docs/method.md §1.3). TRL makes the frozen reference copy itself.
* Pairs are conversational: the user turn is the instruction (actor pairs) or the filled judge prompt
  (judge pairs); chosen/rejected are assistant turns. TRL applies the model's chat template.
* Actor and judge pairs are shuffled together (docs/method.md §3.6: "used together"; no mixing ratio given).
* Precision comes from the device, not TRL's defaults (on trl 1.16 ``bf16`` defaults to True and fails
  on CPU): bf16 only on a GPU that supports it, else fp32. Gradient checkpointing is off unless asked.
* ``method: lora`` trains adapters and merges them, so the next iteration loads a plain folder.
* Checkpoints go to ``work_dir``; a rerun after a kill resumes from the last one. The final model is
  written to a temp folder and renamed into place, so ``out_dir`` exists only when complete.
* Every optimizer step's metrics go to ``train_log.jsonl`` beside ``out_dir`` (``training.common.TrainLog``;
  a resumed run continues it), and to ``cfg.report_to`` through TRL (TensorBoard files in
  ``tensorboard/`` beside ``out_dir``, not in the deleted checkpoint folder).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metareward.config import TrainingConfig
from metareward.records import PreferencePair
from metareward.training.common import (
    common_trainer_args,
    load_for_training,
    save_trainer_model,
    train_with_trl,
)


def to_conversational(pairs: Sequence[PreferencePair], seed: int) -> list[dict[str, Any]]:
    rows = [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    random.Random(seed).shuffle(rows)
    return rows


def train_dpo(
    model_path: str,
    pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    cfg: TrainingConfig,
    work_dir: str | Path,
    threads: int = 0,
) -> dict[str, Any]:
    """Train one DPO round from ``model_path`` on ``pairs``; save the result to ``out_dir``.

    Returns training metrics (loss, rewards/margins, accuracies, runtime, steps); every step's metrics
    are in ``train_log.jsonl`` beside ``out_dir``.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if not pairs:
        raise ValueError("no preference pairs to train on")
    loaded = load_for_training(model_path, cfg.precision, threads)
    args = DPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        beta=cfg.beta,
        max_length=cfg.max_length,
        disable_tqdm=False,
        **common_trainer_args(DPOConfig, loaded.bf16, cfg.gradient_checkpointing, cfg.save_steps, cfg.shuffle_seed,
                              cfg.report_to),
    )
    dataset = Dataset.from_list(to_conversational(pairs, cfg.shuffle_seed))
    trainer, result = train_with_trl(DPOTrainer, loaded, args, cfg, out_dir, work_dir, train_dataset=dataset)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    save_trainer_model(trainer, loaded.tokenizer, out_dir, work_dir, cfg.method == "lora", model_path)
    metrics = {
        "pairs": len(pairs),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "runtime_s": result.metrics.get("train_runtime"),
        "precision": loaded.precision,
        "first": _pick(logs[0]) if logs else {},
        "last": _pick(logs[-1]) if logs else {},
    }
    del trainer, loaded
    return metrics


def _pick(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
    return {k: entry[k] for k in keys if k in entry}
