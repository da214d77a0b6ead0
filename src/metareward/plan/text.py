"""The plan as a text table: one block per iteration, then rates, memory, disk, GPUs, problems, assumptions.

A bound is printed with ``<=`` and, where an earlier iteration measured it, the expected value beside
it (``~``); an exact number is printed bare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metareward.plan import Plan
    from metareward.plan.work import StageWork

HEADER = ("stage", "requests", "samples", "records", "prompt tok", "generated tok", "GFLOP", "time here")


def _n(value: float) -> str:
    if value >= 1e7:
        return f"{value / 1e6:,.0f}M"
    return f"{value:,.0f}"


def _cell(w: StageWork, name: str) -> str:
    value = getattr(w, name)
    if name == "requests" and w.stage in ("prompts", "pairs", "train"):
        return "-"
    if name in w.exact:
        return _n(value)
    expected = w.expected.get(name)
    text = f"<={_n(value)}"
    if expected is not None and round(expected) != value:
        text += f" ~{_n(expected)}"
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan) -> str:
    lines = [f"plan of {plan.config}: {plan.shape.name}, {plan.shape.params / 1e6:,.1f}M parameters"]
    for i, works in enumerate(plan.iterations, start=1):
        rows = [HEADER]
        for w in works:
            tokens = (_cell(w, "train_tokens") + " (train)" if w.stage == "train"
                      else "-" if w.stage in ("prompts", "pairs") else _cell(w, "generated_tokens"))
            rows.append((w.stage, _cell(w, "requests"), "-" if w.stage in ("prompts", "pairs", "train") else _cell(w, "samples"),
                         _cell(w, "count"), "-" if w.stage in ("prompts", "pairs", "train") else _cell(w, "prompt_tokens"),
                         tokens,
                         f"{plan.flops[i - 1].get(w.stage, 0.0) / 1e9:,.0f}",
                         _duration(plan.seconds_here[i - 1].get(w.stage))))
        widths = [max(len(r[c]) for r in rows) for c in range(len(HEADER))]
        total = [v for v in plan.seconds_here[i - 1].values()]
        known = None if any(v is None for v in total) else sum(v for v in total if v is not None)
        lines.append(f"\niteration {i}: {works[0].count} prompts; time here {_duration(known)}; "
                     f"disk {plan.disk[i - 1]['records_gib'] + plan.disk[i - 1]['model_gib']:.2f} GiB "
                     f"(+{plan.disk[i - 1]['checkpoints_gib']:.2f} GiB checkpoints while training)")
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(widths[k]) if k == 0 else c.rjust(widths[k]) for k, c in enumerate(r)))
    lines.append("\nrates here (useful GFLOP/s):")
    for stage, rate in plan.rates.flop_per_s.items():
        lines.append(f"  {stage}: {rate / 1e9:,.1f}  [{plan.rates.source.get(stage, '')}]")
    if not plan.rates.flop_per_s:
        lines.append("  none: give --benchmark JSON or --calibrate")
    m = plan.memory
    lines.append(f"\nmemory: weights {m['weights_gib']:.2f} GiB + KV cache {m['kv_cache_gib']:.2f} GiB ({m['kv_basis']}); "
                 f"DPO state {m['train_state_gib']:.2f} GiB")
    lines.append("GPUs (hours per iteration):")
    for g in plan.gpus:
        hours = ", ".join(f"{h:,.2f}" for h in g["hours_per_iteration"])
        lines.append(f"  {g['count']} x {g['gpu']}: {hours}" + (f"  ({'; '.join(g['notes'])})" if g["notes"] else ""))
    if plan.problems:
        lines.append("problems (this machine cannot run it as configured):")
        lines.extend(f"  {p}" for p in plan.problems)
    lines.append("assumptions:")
    lines.extend(f"  - {a}" for a in plan.assumptions)
    return "\n".join(lines)
