"""From work to cost: FLOPs, time, memory and disk of a planned iteration, and what a machine cannot hold.

Every number here is a model, and every model's assumption is a named constant or a labelled input:

* FLOPs (``stage_flops``): ``ModelShape.forward_flops`` (benchmarks/run.py's model). Generation: each
  request's prompt prefilled once (a prefix its group shares, ``StageWork.shared_tokens``, once per
  group: the judge's rubric, a meta-judge battle's rubric, question and response; both engines share
  such prefixes), each sample's tokens decoded against prompt and its own earlier tokens, at the
  stage's mean lengths. DPO: ``DPO_PASSES`` forwards' worth per sequence and epoch (a
  backward is two forwards) plus the reference's forward (once up front in the native trainer, every
  epoch in TRL's).
* Time: FLOPs / a rate in FLOP/s per stage, plus the rates' fixed seconds (loading an engine or a
  trainer). On this machine (``Rates``: measured by calibration, in an earlier iteration of the run or by
  a benchmark JSON) rates and FLOPs both count every prompt whole, benchmarks/run.py's units; on named
  GPUs FLOPs count shared prefixes once (the compute done) against bf16 peak x an efficiency.
* Memory: weights (parameters x bytes of the dtype), KV cache (layers x KV heads x head size x 2 x bytes
  per token, x the tokens a full batch holds), DPO's training state (``TRAIN_STATE_BYTES`` per parameter).
* Disk: the records each iteration writes (``RECORD_OVERHEAD_BYTES`` of JSON per record + text), its
  saved model and, with TRL when ``save_steps`` is reached, the DPO checkpoints in flight (weights +
  AdamW's two float32 moments, two while the newer is written): ``training.space``'s estimate, the same
  the training step checks before it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.config import RunConfig
from metareward.files import free_bytes
from metareward.plan.shape import ModelShape
from metareward.plan.work import StageWork
from metareward.training.space import training_peak_bytes, writes_checkpoints

GIB = float(1 << 30)
DPO_PASSES = 3  # forward + backward of the policy, per sequence and epoch
TRAIN_STATE_BYTES = {"float32": 16, "bfloat16": 16}  # weights + gradients (fp32 or bf16 + fp32 master) + AdamW's 2 fp32 moments
RECORD_OVERHEAD_BYTES = {"responses": 150, "judgments": 220, "meta_judgments": 260, "pairs": 350}
GENERATION_STAGES = ("actor", "judge", "meta_judge")

GPUS: dict[str, dict[str, float]] = {
    # dense bf16 tensor-core peak (vendor data sheets, without sparsity) and memory per GPU
    "H100-SXM": {"bf16_tflops": 989.0, "memory_gib": 80.0},
    "H200": {"bf16_tflops": 989.0, "memory_gib": 141.0},
    "A100-80GB": {"bf16_tflops": 312.0, "memory_gib": 80.0},
}
GPU_EFFICIENCY_ASSUMED = {"generation": 0.15, "train": 0.35}
"""Fractions of bf16 peak assumed for an 8B-class model on data-centre GPUs: generation under vLLM at full
batches (decoding reads every weight per step, so it runs far below peak), DPO under FSDP/ZeRO-3. Not
measured by this project: our gpu-check measured the hf engine and DPO on a 135M model only, whose
fractions (``measured_gpu_efficiency``) are far too small to transfer to 8B."""


def dtype_bytes(name: str) -> int:
    return 4 if name == "float32" else 2


def engine_dtype(cfg: RunConfig) -> str:
    """The engine's dtype; ``auto`` planned as bf16 (native bf16 CPUs and GPUs; fp32 elsewhere)."""
    return "bfloat16" if cfg.engine.dtype == "auto" else cfg.engine.dtype


def train_dtype(cfg: RunConfig, on_gpu: bool) -> str:
    p = cfg.training.precision
    return p if p != "auto" else ("bfloat16" if on_gpu else "float32")


def _means(w: StageWork) -> tuple[float, float]:
    req, samples = w.estimate("requests"), w.estimate("samples")
    prompt = w.estimate("prompt_tokens") / req if req else 0.0
    generated = w.estimate("generated_tokens") / samples if samples else 0.0
    return prompt, generated


def stage_flops(shape: ModelShape, w: StageWork, cfg: RunConfig, shared_prefixes: bool = True) -> float:
    """The useful FLOPs of one stage at its expected work (see the module docstring). Without
    ``shared_prefixes``: every request's prompt counted whole, as benchmarks/run.py counts "useful" work;
    rates measured in those units (a benchmark JSON, and this module's ``Rates`` for this machine) divide
    those FLOPs."""
    if w.stage in GENERATION_STAGES:
        prompt, generated = _means(w)
        steps = max(generated - 1.0, 0.0)
        shared = min(w.shared_tokens, prompt) if w.groups and shared_prefixes else 0.0
        prefill = (w.groups * shape.forward_flops(shared, 0, 0) if shared else 0.0) \
            + w.estimate("requests") * shape.forward_flops(prompt - shared, shared, 1)
        return prefill + w.estimate("samples") * shape.forward_flops(steps, prompt, steps)
    if w.stage == "train":
        count = w.estimate("count")
        if not count:
            return 0.0
        seq = w.estimate("train_tokens") / (2 * count)
        reference = 1 if cfg.training.backend == "native" else cfg.training.epochs
        passes = DPO_PASSES * cfg.training.epochs + reference
        return passes * 2 * count * shape.forward_flops(seq, 0, seq)
    return 0.0


@dataclass
class Rates:
    """FLOP/s per stage (``actor``, ``judge``, ``meta_judge``, ``train``), fixed seconds per stage,
    and a label per stage saying where each came from."""

    flop_per_s: dict[str, float] = field(default_factory=dict)
    fixed_s: dict[str, float] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)

    def seconds(self, stage: str, flops: float) -> float | None:
        if stage not in self.flop_per_s:
            return None if flops else 0.0
        return flops / self.flop_per_s[stage] + self.fixed_s.get(stage, 0.0)


def gpu_rates(gpu: str, count: int, efficiency: dict[str, float]) -> Rates:
    """Rates of ``count`` GPUs of kind ``gpu`` at ``efficiency`` of bf16 peak (perfect scaling assumed)."""
    peak = GPUS[gpu]["bf16_tflops"] * 1e12 * count
    r = Rates()
    for stage in (*GENERATION_STAGES, "train"):
        kind = "train" if stage == "train" else "generation"
        r.flop_per_s[stage] = peak * efficiency[kind]
        r.source[stage] = f"{count} x {gpu} bf16 peak x {efficiency[kind]:g} ({kind} efficiency)"
    return r


# ---------------------------------------------------------------------- memory and disk


def machine_memory_gib() -> float | None:
    """This machine's RAM (Linux ``sysconf``), or None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def free_disk_gib(path: str | Path) -> float:
    """Free space of the file system that holds ``path`` (its nearest existing parent)."""
    return free_bytes(path) / GIB


def memory_gib(shape: ModelShape, cfg: RunConfig, works: list[StageWork], on_gpu: bool) -> dict[str, Any]:
    """Weights, the KV cache generation holds, and DPO's training state.

    KV cache: the hf engine holds a full batch (``engine.batch_size`` rows, the longest stage's prompt +
    max_tokens each: a bound, its shared prefixes are stored once); vLLM pages it into what the GPU has
    left (``engine.gpu_memory_utilization``), so it needs room for one longest sequence at least, and more
    room means more sequences in flight (``_gpu_row``). DPO: ``TRAIN_STATE_BYTES`` per parameter plus the
    reference model's weights; LoRA: frozen weights only (the adapters' state is small)."""
    w_bytes = dtype_bytes(engine_dtype(cfg))
    weights = shape.params * w_bytes / GIB
    longest = 0.0
    rows_tokens = 0.0
    for w in works:
        if w.stage in GENERATION_STAGES and w.samples:
            seq = (w.prompt_tokens / w.requests if w.requests else 0.0) + w.generated_tokens / w.samples
            longest = max(longest, seq)
            rows_tokens = max(rows_tokens, min(cfg.engine.batch_size, w.samples) * seq)
    per_token = shape.kv_bytes_per_token(w_bytes)
    kv = (rows_tokens if cfg.engine.name == "hf" else longest) * per_token / GIB
    tdtype = train_dtype(cfg, on_gpu)
    reference = shape.params * dtype_bytes(tdtype) / GIB
    state = shape.params * TRAIN_STATE_BYTES[tdtype] / GIB + reference
    if cfg.training.method == "lora":
        state = reference
    basis = (f"a full batch of {cfg.engine.batch_size} rows" if cfg.engine.name == "hf"
             else "one longest sequence; vLLM pages more into the memory it is given")
    return {"weights_gib": round(weights, 2), "kv_cache_gib": round(kv, 2), "kv_basis": basis,
            "generation_gib": round(weights + kv, 2),
            "kv_per_token_kib": round(per_token / 1024, 1), "longest_sequence_tokens": round(longest),
            "train_state_gib": round(state, 2)}


def disk_gib(shape: ModelShape, cfg: RunConfig, works: list[StageWork], chars_per_token: float,
             on_gpu: bool) -> dict[str, float]:
    """One iteration's records, saved model and DPO checkpoints in flight (removed when it ends)."""
    by = {w.stage: w for w in works}

    def texts(stage: str, artifact: str) -> float:
        w = by.get(stage)
        if w is None:
            return 0.0
        per = w.estimate("generated_tokens") / w.estimate("samples") if w.estimate("samples") else 0.0
        return w.estimate("count") * (per * chars_per_token + RECORD_OVERHEAD_BYTES[artifact])

    records = texts("actor", "responses") + texts("judge", "judgments") + texts("meta_judge", "meta_judgments")
    train = by.get("train")
    if train is not None:
        records += train.estimate("train_tokens") * chars_per_token + train.estimate("count") * RECORD_OVERHEAD_BYTES["pairs"]
    # the model save and checkpoints as the training step's own free-space check counts them
    bf16, lora = train_dtype(cfg, on_gpu) == "bfloat16", cfg.training.method == "lora"
    model = training_peak_bytes(shape.params, bf16, lora, False)
    examples = round(train.count) if train is not None else 0
    checkpoint = training_peak_bytes(shape.params, bf16, lora, writes_checkpoints(cfg.training, examples)) - model
    return {"records_gib": round(records / GIB, 3), "model_gib": round(model / GIB, 2),
            "checkpoints_gib": round(checkpoint / GIB, 2)}


def problems(cfg: RunConfig, memory: dict[str, Any], disk_total_gib: float, checkpoint_gib: float,
             machine_gib: float | None, free_gib: float | None) -> list[str]:
    """What this machine cannot hold, with the numbers (``run --check`` prints these)."""
    out = []
    if machine_gib is not None and cfg.engine.name != "openai" and memory["generation_gib"] > machine_gib:
        out.append(f"memory: generation needs {memory['generation_gib']:.1f} GiB (weights {memory['weights_gib']:.1f} "
                   f"+ KV cache {memory['kv_cache_gib']:.1f}) but this machine has {machine_gib:.1f} GiB")
    if machine_gib is not None and not cfg.training.launcher and memory["train_state_gib"] > machine_gib:
        out.append(f"memory: DPO needs {memory['train_state_gib']:.1f} GiB of weights, gradients and optimizer "
                   f"state but this machine has {machine_gib:.1f} GiB")
    if free_gib is not None and disk_total_gib + checkpoint_gib > free_gib:
        out.append(f"disk: the run writes {disk_total_gib:.1f} GiB (records and one model per iteration) plus "
                   f"{checkpoint_gib:.1f} GiB of checkpoints in flight, but {cfg.run_dir} has {free_gib:.1f} GiB free")
    return out


def measured_gpu_efficiency(result: dict[str, Any]) -> dict[str, Any]:
    """What a gpu-check result JSON (benchmarks/results/gpu-*.json) measured: the ceiling and DPO's
    fraction of it, for the 135M model it runs."""
    checks = result.get("checks", {})
    return {"gpu": result.get("gpu"), "ceiling_bf16_tflops": checks.get("ceiling", {}).get("bfloat16_tflops"),
            "dpo_native_fraction": checks.get("dpo_native", {}).get("fraction_of_ceiling"),
            "dpo_trl_fraction": checks.get("dpo_trl", {}).get("fraction_of_ceiling"),
            "actor_tokens_per_s": checks.get("hf_engine", {}).get("actor_throughput_bf16", {}).get("batch_64", {})
            .get("tokens_per_s")}
