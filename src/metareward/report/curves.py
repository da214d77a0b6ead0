"""Training curves: every optimizer step of every iteration, from ``iter_<i>/train_log.jsonl``.

The trainers (TRL DPO, native DPO, SFT; ``training.common.TrainLog``) write one line per step. One figure
per run draws, against the step, one line per iteration: the DPO loss, the implicit rewards of chosen
and rejected completions and their margin, the pair accuracy, the learning rate, the gradient norm
(before clipping) and the throughput. Iteration 0 is the optional SFT step (loss, token accuracy).
Runs older than the step log have none; the report says so instead of drawing empty axes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from metareward.errors import InputError
from metareward.report.html import figure, fmt, table
from metareward.training.common import TRAIN_LOG

PANELS = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin (chosen − rejected)"),
    ("rewards/chosen", "reward of chosen / rejected (dashed)"),
    ("rewards/accuracies", "pair accuracy"),
    ("learning_rate", "learning rate"),
    ("grad_norm", "gradient norm (before clipping)"),
    ("tokens_per_s", "tokens / s"),
    ("mean_token_accuracy", "SFT token accuracy"),
)


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The step records of one ``train_log.jsonl`` (sorted by step); a torn last line is ignored (the
    trainer may be writing it), any other bad line is an error naming file and line."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(lines):
                break
            raise InputError(f"{path}:{k}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise InputError(f"{path}:{k}: step: expected an object with an integer step")
        rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def run_train_logs(iterations: Sequence[tuple[int, Path]]) -> dict[int, list[dict[str, Any]]]:
    """Iteration -> its step records, for the iterations that have a train log."""
    out = {}
    for i, folder in iterations:
        p = folder / TRAIN_LOG
        if p.is_file():
            rows = read_train_log(p)
            if rows:
                out[i] = rows
    return out


def fig_training(logs: dict[int, list[dict[str, Any]]], name: str = "training-curves", title: str = "") -> str:
    panels = [(k, t) for k, t in PANELS if any(k in r for rows in logs.values() for r in rows)]
    cols = 3
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.6 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes.flat, panels):
        for n, (i, rows) in enumerate(sorted(logs.items())):
            c = colours[n % len(colours)]
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 40 else None, color=c,
                        label=f"iter {i}" + (" (SFT)" if i == 0 else ""))
            if key == "rewards/chosen":
                rej = [(r["step"], r["rewards/rejected"]) for r in rows if r.get("rewards/rejected") is not None]
                if rej:
                    ax.plot(*zip(*rej), ls="--", color=c)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(title or "Training curves per optimizer step", fontsize=10)
    fig.tight_layout()
    return figure(name, fig, "One line per iteration (step numbers restart each iteration); DPO: β·log-ratio rewards.")


def table_training(logs: dict[int, list[dict[str, Any]]]) -> str:
    header = ["iter", "steps", "first loss", "last loss", "last margin", "last accuracy", "mean tokens/s",
              "max grad norm"]
    rows = []
    for i, r in sorted(logs.items()):
        tps = [x["tokens_per_s"] for x in r if x.get("tokens_per_s") is not None]
        gn = [x["grad_norm"] for x in r if x.get("grad_norm") is not None]
        rows.append([fmt(i, "int"), fmt(len(r), "int"), fmt(r[0].get("loss")), fmt(r[-1].get("loss")),
                     fmt(r[-1].get("rewards/margins")), fmt(r[-1].get("rewards/accuracies"), "pct"),
                     fmt(sum(tps) / len(tps) if tps else None), fmt(max(gn) if gn else None)])
    return table("training", header, rows)


def training_section(iterations: Sequence[tuple[int, Path]]) -> str:
    logs = run_train_logs(iterations)
    if not logs:
        return (f'<p class="note">No <code>{TRAIN_LOG}</code> in any iteration: this run predates the per-step '
                "training log (its manifests keep only the first and last step), or no iteration has trained yet."
                "</p>")
    return table_training(logs) + fig_training(logs)
