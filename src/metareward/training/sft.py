"""Supervised fine-tuning on EFT data (docs/method.md §1.1, §4.2): the optional step 0 of a run.

The paper's starting point is "SFT on EFT": the seed model fine-tuned on LLM-as-a-Judge examples (the
filled judge prompt as the user turn, a judgment ending in ``Score: k`` as the assistant turn) so it
starts with some judging ability. ``metareward eft build`` makes such data; this module trains on it with
TRL's ``SFTTrainer``.

Choices and assumptions:

* **Loss on the judgment only.** Examples are given to TRL as *conversational prompt-completion* rows
  (``prompt`` = [user turn], ``completion`` = [assistant turn]); TRL applies the model's chat template and,
  with ``completion_only_loss=True``, masks the prompt tokens out of the loss (Self-Rewarding's SFT: "loss
  on target tokens only").
* **Hyperparameters** (docs/method.md §4.2: not given by the paper; its suggestion for an already instructed model):
  lr 1e-6 decaying with a cosine to 1e-7 (``cosine_with_min_lr``), 2 epochs, global batch 16 (4 x 4
  accumulation; Self-Rewarding's SFT batch), 5% warmup, max length 2048 tokens. An example longer than
  ``max_length`` is **dropped, not truncated** (truncation would cut the judgment and its score); the
  count is reported.
* Precision follows the device (bf16 on a GPU that supports it, fp32 on CPU; TRL's own default would be
  bf16 and fail on CPU); gradient checkpointing is off unless asked. ``method: lora`` trains adapters and
  merges them, so the output is a plain model folder like the full fine-tune's.
* The input model must be a plain folder (``metareward.models.resolve_model`` gives one for the embedded
  GGUF model; ``metareward.models.save_plain`` converts any GGUF-loaded model).
* **Step log**: every optimizer step's loss, learning rate, grad norm, token accuracy and tokens/s go to
  ``train_log.jsonl`` beside ``out_dir`` (``training.common.TrainLog``), and to ``report_to`` through TRL.
* **Resumable and atomic**: checkpoints go to ``work_dir`` (default ``<out_dir>.work``) every ``save_steps``
  steps and a rerun resumes from the last one; the final model is written to a temp folder and renamed
  to ``out_dir``, so ``out_dir`` exists only when complete.

Input JSONL (``train.jsonl`` / ``eval.jsonl`` of ``metareward eft build``): one object per line with
non-empty string fields ``prompt`` (user turn) and ``completion`` (assistant turn); other fields (``id``,
``score``, ``human_rank``) are ignored. A malformed line is an ``InputError`` naming file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metareward.config import SFTConfig  # defined with the run config, which must not import torch
from metareward.errors import InputError
from metareward.layout import WORK_DIR
from metareward.records import iter_json_objects
from metareward.training.common import (
    common_trainer_args,
    load_for_training,
    save_trainer_model,
    train_with_trl,
)


def load_sft_jsonl(path: str | Path) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` rows of an SFT JSONL; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SFT data file not found")
    rows = []
    for where, _, obj in iter_json_objects(path):
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise InputError(f"{where}: field '{key}' must be a non-empty string")
        rows.append({"prompt": obj["prompt"], "completion": obj["completion"]})
    return rows


def to_conversational(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """TRL's conversational prompt-completion form: loss goes on the assistant completion only."""
    return [
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["completion"]}]}
        for r in rows
    ]


def n_tokens(tokenizer, row: dict[str, Any]) -> int:
    """Token count of the chat-templated prompt + completion (what the trainer will see)."""
    ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def run_sft(
    model_path: str,
    data_path: str,
    out_dir: str,
    cfg: SFTConfig,
    work_dir: str | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Fine-tune ``model_path`` on the SFT JSONL ``data_path`` (``cfg.eval_data`` optional) and save the
    model to ``out_dir`` (a plain HF folder with tokenizer). Returns metrics: ``examples``,
    ``dropped_too_long``, ``eval_examples``, ``steps``, ``train_loss``, ``eval_loss`` (None without eval
    data), ``runtime_s``, ``precision``, ``first_loss``/``last_loss`` (logged training loss)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out.with_name(out.name + WORK_DIR)
    loaded = load_for_training(model_path, cfg.precision, threads)
    train_rows, dropped = _prepare(loaded.tokenizer, data_path, cfg.max_length)
    if not train_rows:
        raise InputError(f"{data_path}: no example fits in max_length={cfg.max_length} tokens ({dropped} dropped)")
    eval_rows, eval_dropped = _prepare(loaded.tokenizer, cfg.eval_data, cfg.max_length) if cfg.eval_data else ([], 0)
    args = TRLSFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        lr_scheduler_kwargs={"min_lr": cfg.min_learning_rate} if cfg.lr_scheduler == "cosine_with_min_lr" else None,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        **common_trainer_args(TRLSFTConfig, loaded.bf16, cfg.gradient_checkpointing, cfg.save_steps, cfg.seed,
                              cfg.report_to),
    )
    trainer, result = train_with_trl(SFTTrainer, loaded, args, cfg, out, work,
                                     train_dataset=Dataset.from_list(train_rows),
                                     eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_rows else None
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    save_trainer_model(trainer, loaded.tokenizer, out, work, cfg.method == "lora", model_path)
    metrics = {
        "examples": len(train_rows),
        "dropped_too_long": dropped,
        "eval_examples": len(eval_rows),
        "eval_dropped_too_long": eval_dropped,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "eval_loss": eval_loss,
        "runtime_s": result.metrics.get("train_runtime"),
        "precision": loaded.precision,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    del trainer, loaded
    return metrics


def _prepare(tokenizer, path: str, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """The conversational rows of an SFT JSONL that fit ``max_length`` tokens, and how many did not."""
    rows = to_conversational(load_sft_jsonl(path))
    kept = [r for r in rows if n_tokens(tokenizer, r) <= max_length]
    return kept, len(rows) - len(kept)
