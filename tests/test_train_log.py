"""Per-step training logs: ``TrainLog`` resumes without duplicate steps; the native DPO loop writes one line
per optimizer step and feeds ``report_to`` integrations (a tiny random Llama and a character tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch

from metareward.training.common import TrainLog, step_record, train_log_path


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_train_log_appends_and_resumes_without_duplicates(tmp_path):
    path = tmp_path / "iter_1" / "train_log.jsonl"
    log = TrainLog(path)
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 0.7 - 0.1 * step})
    with path.open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    # resumed from the checkpoint of step 2: steps 3 (trained again) and the torn line go
    log = TrainLog(path, resume_step=2)
    assert [x["step"] for x in lines(path)] == [1, 2]
    assert log.last_step == 2
    log.append({"step": 3, "loss": 0.25, "grad_norm": float("nan")})
    assert lines(path) == [{"step": 1, "loss": pytest.approx(0.6)}, {"step": 2, "loss": pytest.approx(0.5)},
                           {"step": 3, "loss": 0.25, "grad_norm": None}]
    with pytest.raises(ValueError, match="not after the last logged step 3"):
        log.append({"step": 3, "loss": 0.1})
    TrainLog(path, resume_step=0)  # a fresh start (native backend after a kill)
    assert path.read_text() == ""


def test_step_record_keeps_the_known_metrics():
    rec = step_record(5, 0.5, {"loss": 1, "rewards/margins": 0.25, "logits/chosen": -3.0, "learning_rate": 5e-6,
                               "grad_norm": None}, 12.3456)
    assert rec == {"step": 5, "epoch": 0.5, "loss": 1.0, "rewards/margins": 0.25, "learning_rate": 5e-6,
                   "elapsed_s": 12.346}
    assert train_log_path("/r/iter_2/model").as_posix() == "/r/iter_2/train_log.jsonl"


class CharTokenizer:
    """Enough of a tokenizer for plain-text DPO pairs: one id per character."""

    eos_token = "\x01"
    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text):
        return {"input_ids": [2 + ord(c) % 60 for c in text]}


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).float()


PAIRS = [{"prompt": f"q{i}?", "chosen": "yes" * (i + 1), "rejected": "no"} for i in range(6)]


def test_native_dpo_logs_every_step_and_reports(tmp_path, monkeypatch):
    from transformers import TrainerCallback
    from transformers.integrations import integration_utils

    from metareward.config import TrainingConfig
    from metareward.training.dpo_native import train_dpo_native

    seen: list[tuple[str, dict]] = []

    class Recorder(TrainerCallback):  # stands in for tensorboard / trackio / wandb (none installed here)
        def on_train_begin(self, args, state, control, **kw):
            seen.append(("begin", {"max_steps": state.max_steps}))

        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(("log", {"step": state.global_step, **logs}))

        def on_train_end(self, args, state, control, **kw):
            seen.append(("end", {}))

    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, "recorder", Recorder)
    path = tmp_path / "iter_1" / "train_log.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')  # a killed earlier round
    cfg = TrainingConfig(learning_rate=1e-3, epochs=2, batch_size=2, gradient_accumulation=2, max_length=64,
                         warmup_ratio=0.0, lr_scheduler="linear", report_to=["recorder"])
    metrics = train_dpo_native(tiny_llama(), CharTokenizer(), PAIRS, cfg, log_path=path)
    rows = lines(path)
    assert metrics["steps"] == 4  # 6 pairs / global batch 4 = 2 steps per epoch, 2 epochs
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows] == [0.5, 1.0, 1.5, 2.0]
    # the learning rate each step used: linear decay from 1e-3 over 4 steps
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    for r in rows:
        assert set(r) == {"step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                          "rewards/accuracies", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s"}
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-6)
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    assert rows[0]["loss"] == pytest.approx(metrics["first"]["loss"]) and rows[-1]["loss"] == metrics["last"]["loss"]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 1: -log σ(0)
    assert seen[0] == ("begin", {"max_steps": 4}) and seen[-1] == ("end", {})
    logged = [x for kind, x in seen if kind == "log"]
    assert [x["step"] for x in logged] == [1, 2, 3, 4]
    assert logged[2]["loss"] == rows[2]["loss"] and "epoch" not in logged[2]


# ---------------------------------------------------------------- the TRL trainers (tiny random model)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 1-layer random Llama with the embedded model's tokenizer (chat template), saved as a plain folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metareward.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def our_warnings(caught) -> list[str]:
    """Deprecation/Future warnings attributed to metareward's own code (third-party internals excluded)."""
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning)) and "/metareward/" in w.filename]


def test_trl_dpo_writes_the_step_log_without_deprecated_calls(tmp_path, tiny_model_dir):
    import warnings

    from metareward.config import TrainingConfig
    from metareward.records import PreferencePair
    from metareward.training.dpo import train_dpo

    pairs = [PreferencePair(f"actor/p{i}", "actor", f"p{i}", f"Say {i}.", f"{i}", f"no {i} " * (i + 1), "c", "r")
             for i in range(4)]
    cfg = TrainingConfig(batch_size=2, gradient_accumulation=1, max_length=64, warmup_ratio=0.0, precision="float32",
                         learning_rate=1e-3, save_steps=1)
    out = tmp_path / "iter_1" / "model"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train_dpo(tiny_model_dir, pairs, out, cfg, tmp_path / "iter_1" / ".work" / "dpo")
    assert our_warnings(caught) == []
    rows = lines(tmp_path / "iter_1" / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and metrics["steps"] == 2
    for r in rows:
        assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "learning_rate", "grad_norm", "tokens_per_s", "epoch", "elapsed_s"} <= set(r)
        assert r["tokens_per_s"] > 0
    assert rows[0]["loss"] == pytest.approx(metrics["first"]["loss"])
    assert rows[0]["learning_rate"] == pytest.approx(1e-3)  # cosine at step 1 of 2 with no warmup
    assert (out / "config.json").is_file()


def test_trl_callback_resumes_after_the_checkpoint_step(tmp_path):
    from transformers import TrainerControl, TrainerState

    from metareward.training.common import train_log_callback

    path = tmp_path / "train_log.jsonl"
    TrainLog(path).append({"step": 1, "loss": 0.7})
    TrainLog(path, resume_step=1).append({"step": 2, "loss": 0.6})  # step 2 logged, then killed before its checkpoint
    cb = train_log_callback(path)
    state = TrainerState(global_step=1)  # resumed from checkpoint-1
    cb.on_train_begin(None, state, TrainerControl())
    assert [r["step"] for r in lines(path)] == [1]
    state.global_step, state.epoch = 2, 1.0
    cb.on_log(None, state, TrainerControl(), logs={"loss": 0.55, "num_tokens": 100.0, "grad_norm": 1.5})
    cb.on_log(None, state, TrainerControl(), logs={"train_loss": 0.6})  # the end-of-training summary: not a step
    rows = lines(path)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] == 0.55 and rows[1]["grad_norm"] == 1.5
    assert rows[1]["tokens_per_s"] > 0


def test_sft_writes_the_step_log(tmp_path, tiny_model_dir):
    import warnings

    from metareward.training.sft import SFTConfig, run_sft

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Rate answer {i}.", "completion": f"Fine.\nScore: {i % 6}"}) + "\n"
                            for i in range(4)))
    cfg = SFTConfig(data=str(data), max_steps=2, batch_size=2, gradient_accumulation=1, max_length=128,
                    precision="float32", warmup_ratio=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_sft(tiny_model_dir, str(data), str(tmp_path / "iter_0" / "model"), cfg)
    assert our_warnings(caught) == []
    rows = lines(tmp_path / "iter_0" / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and metrics["steps"] == 2
    assert rows[-1]["loss"] == pytest.approx(metrics["last_loss"])
    assert {"learning_rate", "grad_norm", "mean_token_accuracy", "tokens_per_s"} <= set(rows[0])
