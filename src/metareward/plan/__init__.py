"""The compute planner: what a config costs before it runs (``metareward plan CONFIG``, ``run --check``).

Per iteration and stage: requests, samples, records, prompt and generated tokens (``work``), then FLOPs,
time on this machine and on named GPUs, memory and disk (``cost``, ``rates``), and what this machine
cannot hold. Everything is computed from the config, the prompt pool, the model's config.json and
tokenizer, and whatever the run directory already holds; no weights are loaded (unless ``calibrate``).
Each number says whether it is exact or a bound, and each estimate names its source
(``Plan.assumptions``): the planner's job is to be honest about what it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.config import RunConfig
from metareward.layout import RunLayout
from metareward.plan.cost import (
    GIB,
    GPU_EFFICIENCY_ASSUMED,
    GPUS,
    Rates,
    disk_gib,
    free_disk_gib,
    gpu_rates,
    machine_memory_gib,
    measured_gpu_efficiency,
    memory_gib,
    problems,
    stage_flops,
)
from metareward.plan.rates import calibrate as run_calibration
from metareward.plan.rates import default_benchmark, rates_from_benchmark, rates_from_run
from metareward.plan.shape import ModelShape, TokenCounter, load_shape, load_token_counter
from metareward.plan.work import (
    Known,
    StageWork,
    Stored,
    draw_prompts,
    fill_like,
    latest_measured,
    plan_iteration,
)
from metareward.pool import load_prompt_pool

__all__ = ["Plan", "make_plan"]

GPU_SETUPS = (("H100-SXM", 1), ("H100-SXM", 8), ("H200", 1), ("H200", 8))


@dataclass
class Plan:
    config: str
    shape: ModelShape
    tokens: str
    iterations: list[list[StageWork]]
    flops: list[dict[str, float]]
    seconds_here: list[dict[str, float | None]]
    rates: Rates
    memory: dict[str, Any]
    disk: list[dict[str, float]]
    gpus: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def stage(self, iteration: int, name: str) -> StageWork | None:
        return next((w for w in self.iterations[iteration - 1] if w.stage == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "model": {"name": self.shape.name, "parameters": self.shape.params, "layers": self.shape.layers,
                      "kv_heads": self.shape.kv_heads, "head_dim": self.shape.head_dim, "source": self.shape.source},
            "tokens": self.tokens,
            "iterations": [
                {"iteration": i, "stages": [{**w.to_dict(), "gflop": round(self.flops[i - 1].get(w.stage, 0.0) / 1e9, 1),
                                             "seconds_here": _round(self.seconds_here[i - 1].get(w.stage))}
                                            for w in works],
                 "disk": self.disk[i - 1]}
                for i, works in enumerate(self.iterations, start=1)
            ],
            "rates_here": {"gflop_per_s": {k: round(v / 1e9, 2) for k, v in self.rates.flop_per_s.items()},
                           "fixed_s": self.rates.fixed_s, "source": self.rates.source},
            "memory": self.memory,
            "gpus": self.gpus,
            "problems": self.problems,
            "assumptions": self.assumptions,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def total_seconds_here(self) -> float | None:
        values = [v for it in self.seconds_here for v in it.values()]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def make_plan(cfg: RunConfig, config_name: str = "", *, tokens: TokenCounter | None = None,
              shape: ModelShape | None = None, benchmark: str | Path | None = None, calibrate: bool = False,
              gpu_efficiency: dict[str, float] | None = None, pair_builder: Any = None,
              machine_gib: float | None = -1.0, pool_like: str | None = None) -> Plan:
    """The plan of ``cfg`` (see the module docstring). ``tokens`` and ``shape`` default to the model's own
    (read from disk); ``pair_builder`` to the loop's pairs stage (``whatif.loop_pairs``); ``machine_gib``
    to this machine's memory (None: do not check memory); ``pool_like``: plan with this pool's prompts
    cycled in place of the config's (``work.fill_like``; an assumption the plan names)."""
    folder = None
    if shape is None:
        shape, folder = load_shape(cfg.model)
    if tokens is None:
        tokens = load_token_counter(folder)
    if pair_builder is None:
        from metareward.whatif import loop_pairs

        pair_builder = loop_pairs
    pool = load_prompt_pool(pool_like or cfg.prompts)
    assumptions = [f"model: {shape.name}, {shape.params / 1e6:,.1f}M parameters ({shape.source})", tokens.label]
    if pool_like:
        pool = fill_like(cfg, pool)
        assumptions.append(f"prompts: {pool_like}'s {len(load_prompt_pool(pool_like))} prompts cycled in place of "
                           f"{cfg.prompts} (prompt lengths assumed alike)")
    drawn = draw_prompts(cfg, pool)
    run = RunLayout(cfg.run_dir)
    on_gpu = cfg.engine.device.startswith("cuda") or cfg.engine.name == "vllm"

    def builder_for(i: int) -> Any:
        return lambda r, j, m: pair_builder(cfg, i, drawn[i - 1], r, j, m)

    iterations: list[list[StageWork]] = []
    for i, prompts in enumerate(drawn, start=1):
        stored = Stored.read(run.iteration(i))
        known = Known.of(stored)
        iterations.append(plan_iteration(cfg, i, prompts, tokens, known, latest_measured(run, cfg, i), builder_for(i)))
    flops = [{w.stage: stage_flops(shape, w, cfg) for w in works} for works in iterations]
    whole = [{w.stage: stage_flops(shape, w, cfg, shared_prefixes=False) for w in works} for works in iterations]

    rates = _rates_here(cfg, shape, tokens, run, drawn, benchmark, calibrate, builder_for)
    seconds = [{stage: rates.seconds(stage, f) for stage, f in it.items()} for it in whole]

    memory = memory_gib(shape, cfg, [w for works in iterations for w in works], on_gpu)
    chars_per_token = _chars_per_token(pool, tokens)
    disk = [disk_gib(shape, cfg, works, chars_per_token, on_gpu) for works in iterations]
    if machine_gib == -1.0:
        machine_gib = None if on_gpu else machine_memory_gib()
    free = free_disk_gib(cfg.run_dir)
    total_disk = sum(d["records_gib"] + d["model_gib"] for d in disk)
    found = problems(cfg, memory, total_disk, max(d["checkpoints_gib"] for d in disk), machine_gib, free)

    efficiency = gpu_efficiency or GPU_EFFICIENCY_ASSUMED
    gpus = [_gpu_row(name, count, efficiency, flops, memory, cfg) for name, count in GPU_SETUPS]
    assumptions += [
        f"generated tokens: bounded by max_tokens; 'expected' uses {_measured_label(run, cfg, len(drawn))}",
        f"GPUs: time = FLOPs / (bf16 peak x efficiency {efficiency}), perfect scaling across GPUs "
        + ("(given on the command line)" if gpu_efficiency else "(assumed; see docs/planning.md)"),
        f"disk: {chars_per_token:.2f} characters per token (the prompt pool's) for record sizes",
    ]
    gpu_result = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "gpu-2026-11-30.json"
    if gpu_result.is_file():
        measured = measured_gpu_efficiency(json.loads(gpu_result.read_text(encoding="utf-8")))
        assumptions.append(f"measured on a GPU (gpu-check, 135M model, not transferable to 8B): {measured}")
    return Plan(config_name or cfg.run_dir, shape, tokens.label, iterations, flops, seconds, rates, memory, disk,
                gpus, found, assumptions)


def _measured_label(run: RunLayout, cfg: RunConfig, n: int) -> str:
    found = latest_measured(run, cfg, n + 1)
    return f"lengths measured in iteration {found.iteration} of this run" if found else "the bounds (no finished iteration yet)"


def _chars_per_token(pool: list[Any], tokens: TokenCounter) -> float:
    sample = [p.text for p in pool[:200]]
    n = sum(tokens.texts(sample))
    return sum(len(t) for t in sample) / n if n else tokens.chars_per_token


def _rates_here(cfg: RunConfig, shape: ModelShape, tokens: TokenCounter, run: RunLayout,
                drawn: list[list[Any]], benchmark: str | Path | None, calibrate: bool, builder_for: Any) -> Rates:
    """Benchmark rates, overridden by a calibration, overridden by this run's own measurements."""
    rates = Rates()
    path = benchmark or default_benchmark()
    bench = rates_from_benchmark(path) if path else None
    if bench:
        rates = bench
    if calibrate:
        from metareward.models import resolve_model

        cal = run_calibration(cfg, shape, resolve_model(cfg.model), drawn[0], tokens, bench)
        rates = Rates({**rates.flop_per_s, **cal.flop_per_s}, {**rates.fixed_s, **cal.fixed_s},
                      {**rates.source, **cal.source})
    prompts_of = dict(enumerate(drawn, start=1))
    own = rates_from_run(run, cfg, shape, tokens, prompts_of, len(drawn) + 1, builder_for)
    if own.flop_per_s:
        rates = Rates({**rates.flop_per_s, **own.flop_per_s}, {}, {**rates.source, **own.source})
    return rates


def _gpu_row(gpu: str, count: int, efficiency: dict[str, float], flops: list[dict[str, float]],
             memory: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """Hours per iteration on ``count`` GPUs of kind ``gpu``, and what their memory holds: generation with
    the weights split over ``engine.tensor_parallel_size`` GPUs (vLLM's KV cache in the rest of
    ``gpu_memory_utilization``), DPO's state sharded over all of them (FSDP / ZeRO-3) when one cannot hold it."""
    r = gpu_rates(gpu, count, efficiency)
    per_stage = [{s: round((r.seconds(s, f) or 0.0) / 3600, 2) for s, f in it.items() if f} for it in flops]
    per_iteration = [sum(r.seconds(s, f) or 0.0 for s, f in it.items()) for it in flops]
    mem = GPUS[gpu]["memory_gib"]
    notes = []
    tp = max(1, cfg.engine.tensor_parallel_size) if cfg.engine.name == "vllm" else 1
    usable = mem * (cfg.engine.gpu_memory_utilization if cfg.engine.name == "vllm" else 1.0)
    weights = memory["weights_gib"] / tp
    room = usable - weights
    if room < memory["kv_cache_gib"] / tp:
        notes.append(f"generation: weights {weights:.0f} GiB + KV cache {memory['kv_cache_gib'] / tp:.1f} GiB per GPU "
                     f"> {usable:.0f} GiB: raise engine.tensor_parallel_size")
    elif cfg.engine.name == "vllm" and memory["longest_sequence_tokens"]:
        seqs = room * GIB / (memory["kv_per_token_kib"] * 1024 / tp) / memory["longest_sequence_tokens"]
        notes.append(f"vLLM KV room {room:.0f} GiB per GPU: ~{seqs:,.0f} longest sequences in flight per replica")
    state = memory["train_state_gib"]
    if state / count > mem:
        notes.append(f"DPO state {state:.0f} GiB / {count} GPU > {mem:.0f} GiB: does not fit")
    elif state > mem:
        notes.append(f"DPO state {state:.0f} GiB: FSDP/ZeRO-3 over {count} GPUs ({state / count:.0f} GiB each, "
                     "+ activations)")
    return {"gpu": gpu, "count": count, "hours_per_iteration": [round(s / 3600, 2) for s in per_iteration],
            "hours_per_stage": per_stage, "notes": notes}
