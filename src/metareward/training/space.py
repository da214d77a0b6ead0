"""Disk space a training step (DPO or SFT) writes, checked against the free space before it starts.

A full disk found at the end of training costs the whole training run (the model save fails after the
last step); found before, it costs nothing. ``check_training_space`` estimates the peak of what the step
will have on disk beside its output folder and stops with a one-line ``files.DiskError`` naming the path,
the need and the free space when it does not fit:

* the trained model: its parameter count (``parameter_count``: the tensors' shapes in the starting model's
  safetensors headers, so tied weights count once, as they are saved) x 2 bytes (bf16) or 4 (float32);
* checkpoints, with the TRL trainers when ``save_steps`` is reached: weights and AdamW's two float32
  moments (4 + 4 bytes per parameter) for full fine-tuning, and two of them at the peak (the trainers keep
  one, ``save_total_limit=1``, and write the next before deleting it); with LoRA a checkpoint holds only
  the adapter, which is left out. The native DPO backend writes no checkpoints. The peak is the larger of
  two checkpoints and one checkpoint plus the final model (the work folder is dropped after the save);
  what the work folder already holds (a resumed step's checkpoint) is counted as written.

The estimate leaves out small files (tokenizer, trainer state, logs), so it is a floor, not a bound: the
OS errors of a save that still fails become the same one-line error (``files.disk_errors``).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metareward.files import disk_errors, require_free_space
from metareward.layout import IterationLayout

ADAM_STATE_BYTES = 8
"""AdamW's two moments per trained parameter, float32 each."""


def parameter_count(model_path: str | Path) -> int | None:
    """Parameters stored in the model folder's ``*.safetensors`` files, read from their headers (no tensor
    is loaded); None when the folder has none (a hub name, a ``.bin`` checkpoint)."""
    total, found = 0, False
    for path in sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
        found = True
    return total if found else None


def training_peak_bytes(parameters: int, bf16: bool, lora: bool, checkpoints: bool) -> int:
    """The most bytes a training step has on disk at once (module docstring)."""
    model = parameters * (2 if bf16 else 4)
    if not checkpoints or lora:
        return model
    checkpoint = model + parameters * ADAM_STATE_BYTES
    return max(2 * checkpoint, checkpoint + model)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def check_training_space(model_path: str, out_dir: Path, work_dir: Path, precision: str, lora: bool,
                         checkpoints: bool, what: str) -> int | None:
    """Stop with a ``DiskError`` when the step's peak (less what ``work_dir`` already holds) does not fit
    the free space at ``out_dir``; returns the bytes needed, or None when the starting model's size is
    unknown (then nothing is checked)."""
    from metareward.training.common import use_bf16

    parameters = parameter_count(model_path)
    if parameters is None:
        return None
    peak = training_peak_bytes(parameters, use_bf16(precision), lora, checkpoints)
    model = training_peak_bytes(parameters, use_bf16(precision), lora, False)
    need = max(model, peak - folder_bytes(Path(work_dir)))
    require_free_space(out_dir, need, f"{what} ({parameters / 1e6:.0f}M parameters: model save"
                       + (", checkpoints" if checkpoints and not lora else "") + ")")
    return need


def writes_checkpoints(cfg: Any, examples: int) -> bool:
    """Whether training ``examples`` with ``cfg`` (a ``TrainingConfig`` or ``SFTConfig``) reaches a checkpoint:
    the TRL trainers save one every ``save_steps`` optimizer steps (one process counted: a launch on several
    has fewer steps, so this errs towards counting them); the native DPO backend saves none."""
    if getattr(cfg, "backend", "trl") == "native" or cfg.save_steps <= 0:
        return False
    steps = cfg.max_steps if getattr(cfg, "max_steps", -1) > 0 else math.ceil(
        examples * cfg.epochs / max(1, cfg.batch_size * cfg.gradient_accumulation))
    return steps >= cfg.save_steps


def _lines(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


@contextlib.contextmanager
def training_writes(kind: str, model_path: str, cfg: Any, examples: int | None, layout: IterationLayout
                    ) -> Iterator[None]:
    """Around a training step (``kind``: "DPO" or "SFT") into ``layout.model``: check the free space first
    (``check_training_space``; ``examples`` None: the lines of ``cfg.data``), then turn a full disk or
    another refusal of the filesystem into a one-line ``DiskError``, and on any failure remove the
    iteration folder's temporaries (a half-written ``model.tmp<pid>``, ``tmp-checkpoint-<step>``)."""
    examples = _lines(cfg.data) if examples is None else examples
    work = layout.train_work(kind.lower())
    check_training_space(model_path, layout.model, work, cfg.precision, cfg.method == "lora",
                         writes_checkpoints(cfg, examples), kind)
    with disk_errors(layout.model, f"{kind} (saving the model or a checkpoint)", sweep=layout.dir):
        yield
