"""Settings shared by the TRL trainers (DPO and SFT): precision, checkpoints, LoRA, common arguments.

Both trainers follow the device rather than TRL's defaults (on trl 1.16 ``bf16`` defaults to True and
fails on CPU, and activation checkpointing defaults to on), checkpoint every ``save_steps`` keeping
the last one, and resume from it after a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def use_bf16(precision: str) -> bool:
    """bf16 when asked, or ("auto") on a GPU that supports it; fp32 otherwise."""
    if precision == "bfloat16":
        return True
    if precision == "float32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def last_checkpoint(work_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``work_dir`` (to resume from), or None."""
    ckpts = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def checkpointing_kwargs(config_cls: type, enabled: bool) -> dict[str, bool]:
    """Set activation (gradient) checkpointing explicitly: TRL defaults it to on, and transformers 5
    renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name still works but warns)."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    if "activation_checkpointing" in fields:
        return {"activation_checkpointing": enabled}
    return {"gradient_checkpointing": enabled}


def lora_config(r: int, alpha: int, dropout: float):
    """LoRA adapters on every linear layer of a causal LM (merged after training by the callers)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


def common_trainer_args(config_cls: type, bf16: bool, checkpointing: bool, save_steps: int, seed: int) -> dict[str, Any]:
    """Arguments both TRL configs take the same way."""
    return {
        "bf16": bf16,
        "fp16": False,
        **checkpointing_kwargs(config_cls, checkpointing),
        "use_cpu": not torch.cuda.is_available(),
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 1,
        "logging_steps": 1,
        "report_to": [],
        "seed": seed,
        "dataset_num_proc": None,
    }


def save_trainer_model(trainer: Any, tokenizer: Any, out_dir: str | Path, work_dir: str | Path, merge_lora: bool,
                       base_model_path: str) -> None:
    """Save a TRL trainer's model as a plain folder at ``out_dir`` (LoRA merged) and drop ``work_dir``.

    Under ``accelerate launch`` (DDP/FSDP/ZeRO-3) every process takes part in a collective save that the
    main process alone writes (``distributed.save_trained``); in one process the folder is written
    atomically (``models.save_model_atomic``)."""
    import shutil

    if trainer.accelerator.num_processes > 1:
        from metareward.training.distributed import save_trained

        save_trained(trainer, tokenizer, out_dir, work_dir, merge_lora, base_model_path)
        return
    from metareward.models import save_model_atomic

    trained = trainer.model.merge_and_unload() if merge_lora else trainer.model
    save_model_atomic(trained, tokenizer, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
