"""The set-up the three trainers share (``training.common``): LoRA or not, and the loaded model and
tokenizer (threads, pad token, precision)."""

from __future__ import annotations

import pytest
import torch

from metareward.config import SFTConfig, TrainingConfig
from metareward.training.common import load_for_training, peft_config


def test_peft_config_follows_the_method():
    assert peft_config(TrainingConfig(method="full")) is None
    lora = peft_config(SFTConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 8, 0.0)
    assert lora.target_modules == "all-linear" and lora.task_type == "CAUSAL_LM"


@pytest.mark.slow
def test_load_for_training_sets_threads_pad_token_and_precision():
    from metareward.models import resolve_model

    path = resolve_model("smollm2-135m")
    threads = torch.get_num_threads()
    try:
        loaded = load_for_training(path, "bfloat16", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert loaded.bf16 and loaded.precision == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.pad_token is not None
    fp32 = load_for_training(path, "float32")
    assert not fp32.bf16 and fp32.precision == "float32"
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(fp32.model.parameters()).device.type == "cpu"
