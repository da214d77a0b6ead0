"""Saving a model trained by several processes (``accelerate launch``: DDP, FSDP or DeepSpeed ZeRO-3).

Under DDP every process holds the whole model; under FSDP and ZeRO-3 each holds a shard. A plain
``model.save_pretrained`` per process would race on the output folder (DDP) or write shards or empty
tensors (FSDP, ZeRO-3). ``save_trained`` is called by *every* process (the gather is collective):

* full fine-tuning: ``trainer.save_model`` gathers the full state dict (needs
  ``fsdp_state_dict_type: FULL_STATE_DICT`` for FSDP and ``zero3_save_16bit_model: true`` (DeepSpeed's
  ``stage3_gather_16bit_weights_on_model_save``) for ZeRO-3, as in ``configs/accelerate/``) and the main process writes it with the tokenizer;
* LoRA: the gathered adapter is saved, then the main process loads the base model, applies the adapter
  and merges it, so the next iteration loads a plain folder as in single-process training;
* the folder is written under a temporary name and renamed into place by the main process only, then
  every process waits, so ``out_dir`` exists only when complete and no process returns before it does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def save_trained(
    trainer: Any, tokenizer: Any, out_dir: str | Path, work_dir: str | Path, merge_lora: bool, base_model_path: str
) -> None:
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    acc = trainer.accelerator
    main = acc.is_main_process
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    if not merge_lora:
        trainer.save_model(str(tmp))  # collective; writes on the main process only
        acc.wait_for_everyone()
        if main:
            tokenizer.save_pretrained(tmp)
    else:
        adapter = work_dir / "final_adapter"
        trainer.save_model(str(adapter))
        acc.wait_for_everyone()
        if main:
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            dtype = next(acc.unwrap_model(trainer.model).parameters()).dtype
            base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=dtype if dtype.is_floating_point
                                                        else torch.float32)
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    if main:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    acc.wait_for_everyone()
