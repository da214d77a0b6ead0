"""Settings shared by the trainers (TRL DPO, native DPO, SFT): precision, checkpoints, LoRA, step logs.

Both TRL trainers follow the device rather than TRL's defaults (on trl 1.16 ``bf16`` defaults to True and
fails on CPU, and activation checkpointing defaults to on), checkpoint every ``save_steps`` keeping
the last one, and resume from it after a kill.

Every trainer writes one JSON line per optimizer step to ``iter_<i>/train_log.jsonl`` (``TrainLog``):
``step``, ``epoch``, ``loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_s``, ``elapsed_s`` and, for DPO,
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (SFT: TRL's
``mean_token_accuracy``). Lines are appended and flushed per step; a resumed training first drops the
lines of steps after the checkpoint it resumes from (they are trained again), so no step appears twice.
``training.report_to`` goes to TRL unchanged; the native backend feeds the same per-step metrics to
transformers' integration callbacks (``reporting_callbacks``), so tensorboard, trackio, wandb, ... work
there too when the user has installed them.

The set-up the three trainers share is here too, once: ``load_for_training`` (threads, tokenizer with a pad
token, model in the precision ``use_bf16`` picks), ``peft_config`` (LoRA or none) and, for the two TRL
trainers, ``train_with_trl`` (train-log callback, TensorBoard folder, resume from the last checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TRAIN_LOG = "train_log.jsonl"
"""Per-step training metrics, next to the iteration's ``model/`` folder."""

STEP_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "learning_rate", "grad_norm", "tokens_per_s", "mean_token_accuracy")
"""The metrics kept from a trainer's log entry (others, e.g. TRL's logits/*, are left out)."""


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


def peft_config(cfg: Any):
    """The LoRA config of a training section (``TrainingConfig`` or ``SFTConfig``) with ``method: lora``,
    else None (full fine-tuning)."""
    if cfg.method != "lora":
        return None
    return lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)


@dataclass
class Loaded:
    """A model and its tokenizer loaded for training, and whether the model is in bf16."""

    model: Any
    tokenizer: Any
    bf16: bool

    @property
    def precision(self) -> str:
        """The dtype's name as the trainers' metrics report it."""
        return "bfloat16" if self.bf16 else "float32"


def load_for_training(model_path: str, precision: str, threads: int = 0, on_device: bool = False) -> Loaded:
    """The set-up every trainer starts with: ``threads`` torch threads (0: torch's default), the tokenizer
    (its eos as pad token where it has none), the model in bf16 or float32 (``use_bf16(precision)``).

    ``on_device``: move the model to the GPU where there is one (the native loop; TRL's trainers place the
    model themselves)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bf16 = use_bf16(precision)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    if on_device:
        model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    return Loaded(model, tokenizer, bf16)


def common_trainer_args(config_cls: type, bf16: bool, checkpointing: bool, save_steps: int, seed: int,
                        report_to: Sequence[str] = ()) -> dict[str, Any]:
    """Arguments both TRL configs take the same way (``report_to``: transformers' integration names)."""
    return {
        "bf16": bf16,
        "fp16": False,
        **checkpointing_kwargs(config_cls, checkpointing),
        "use_cpu": not torch.cuda.is_available(),
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 1,
        "logging_steps": 1,
        "report_to": list(report_to),
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


def train_with_trl(trainer_cls: type, loaded: Loaded, args: Any, cfg: Any, out_dir: Path, work_dir: Path,
                   **datasets: Any) -> tuple[Any, Any]:
    """Build a TRL trainer (``DPOTrainer``, ``SFTTrainer``) on ``loaded`` and train it: LoRA per ``cfg``,
    each step's metrics to ``train_log.jsonl`` beside ``out_dir``, TensorBoard files (when ``report_to``
    has it) in ``tensorboard/`` beside ``out_dir`` rather than in the checkpoint folder, resumed from the
    last checkpoint in ``work_dir`` when there is one. ``datasets``: ``train_dataset`` (and
    ``eval_dataset``). Returns (trainer, ``TrainOutput``); the caller saves (``save_trainer_model``)."""
    trainer = trainer_cls(
        model=loaded.model,
        args=args,
        processing_class=loaded.tokenizer,
        peft_config=peft_config(cfg),
        callbacks=[train_log_callback(train_log_path(out_dir))],
        **datasets,
    )
    place_tensorboard_logs(trainer.callback_handler.callbacks, out_dir.parent / "tensorboard")
    result = trainer.train(resume_from_checkpoint=last_checkpoint(work_dir))
    return trainer, result


# ---------------------------------------------------------------- per-step training log


def train_log_path(out_dir: str | Path) -> Path:
    """``iter_<i>/train_log.jsonl`` for a trainer writing its model to ``iter_<i>/model``."""
    return Path(out_dir).parent / TRAIN_LOG


class TrainLog:
    """Append-only ``train_log.jsonl`` of one training run, resumable without duplicate steps.

    Opening it with ``resume_step = s`` keeps the lines of steps ``<= s`` (the steps the resumed run will
    not train again) and drops later ones and a torn last line, rewriting the file atomically only when
    something was dropped. ``append`` writes one line, flushed and fsynced, so a kill loses at most the
    step being written. ``resume_step = 0`` starts a fresh log (the native backend restarts a killed round).
    """

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        changed = False
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    step = json.loads(line)["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    changed = True  # torn or foreign line
                    continue
                if line.endswith("\n") and isinstance(step, int) and step <= resume_step:
                    kept.append(line)
                else:
                    changed = True
        if changed:
            from metareward.files import atomic_write_text

            atomic_write_text(self.path, "".join(kept))
        self.last_step = max((json.loads(x)["step"] for x in kept), default=0)

    def append(self, record: Mapping[str, Any]) -> None:
        """One step's metrics; ``record["step"]`` must be an int above every logged step."""
        step = record["step"]
        if not isinstance(step, int) or step <= self.last_step:
            raise ValueError(f"{self.path}: step {step!r} is not after the last logged step {self.last_step}")
        clean = {k: _finite(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.last_step = step


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: such a float becomes null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def step_record(step: int, epoch: float | None, logs: Mapping[str, Any], elapsed_s: float) -> dict[str, Any]:
    """The ``STEP_KEYS`` of a trainer's log entry as one train-log line."""
    out: dict[str, Any] = {"step": step, "epoch": None if epoch is None else round(float(epoch), 6)}
    for key in STEP_KEYS:
        if key in logs and logs[key] is not None:
            out[key] = float(logs[key])
    out["elapsed_s"] = round(elapsed_s, 3)
    return out


def train_log_callback(path: str | Path):
    """A transformers ``TrainerCallback`` that writes each training log entry of the main process to a
    ``TrainLog`` (``logging_steps=1``: one entry per optimizer step). tokens/s comes from TRL's cumulative
    ``num_tokens`` (tokens of the batches this process trained) over the wall time since the last entry."""
    from transformers import TrainerCallback

    class TrainLogCallback(TrainerCallback):
        def __init__(self) -> None:
            self.log: TrainLog | None = None
            self.start = self.last_time = time.perf_counter()
            self.last_tokens = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.log = TrainLog(path, resume_step=state.global_step)
            self.start = self.last_time = time.perf_counter()
            self.last_tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.log is None or not logs or "loss" not in logs or state.global_step <= self.log.last_step:
                return
            now = time.perf_counter()
            entry = dict(logs)
            tokens = logs.get("num_tokens")
            if tokens is not None and now > self.last_time:
                entry["tokens_per_s"] = (float(tokens) - self.last_tokens) / (now - self.last_time)
                self.last_tokens = float(tokens)
            self.last_time = now
            self.log.append(step_record(state.global_step, state.epoch, entry, now - self.start))

    return TrainLogCallback()


def place_tensorboard_logs(callbacks: Sequence[Any], log_dir: str | Path) -> None:
    """Point transformers' TensorBoard callback (if any, and unless ``TENSORBOARD_LOGGING_DIR`` is set) at
    ``log_dir``: its default, ``output_dir/runs``, is the checkpoint folder, deleted after training."""
    for cb in callbacks:
        if type(cb).__name__ == "TensorBoardCallback" and getattr(cb, "logging_dir", None) is None:
            cb.logging_dir = str(log_dir)


class NativeReporter:
    """``training.report_to`` for the native DPO loop: transformers' own integration callbacks (the ones TRL
    uses) driven with the loop's per-step metrics. Names are checked by transformers
    (``get_reporting_integration_callbacks``); a destination whose library is missing fails there, as it
    does for TRL. Empty ``report_to``: does nothing."""

    def __init__(self, report_to: Sequence[str], output_dir: str | Path, model: Any = None, tokenizer: Any = None):
        self.handler = None
        names = [n for n in report_to if n != "none"]
        if not names:
            return
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks
        from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

        callbacks = [DefaultFlowCallback] + get_reporting_integration_callbacks(names)
        self.args = TrainingArguments(output_dir=str(output_dir), report_to=names, logging_steps=1,
                                      use_cpu=not torch.cuda.is_available())
        self.state, self.control = TrainerState(), TrainerControl()
        self.handler = CallbackHandler(callbacks, model, tokenizer, None, None)
        place_tensorboard_logs(self.handler.callbacks, Path(output_dir) / "tensorboard")

    def begin(self, max_steps: int) -> None:
        if self.handler is not None:
            self.state.max_steps = max_steps
            self.handler.on_train_begin(self.args, self.state, self.control)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.handler is not None:
            self.state.global_step = int(record["step"])
            self.state.epoch = record.get("epoch")
            logs = {k: v for k, v in record.items() if k not in ("step", "epoch") and v is not None}
            self.handler.on_log(self.args, self.state, self.control, logs)

    def end(self) -> None:
        if self.handler is not None:
            self.handler.on_train_end(self.args, self.state, self.control)
