"""Runs side by side: ``metareward report RUN_A RUN_B [...] --out compare.html``.

The paper's central comparison is Meta-Rewarding against Self-Rewarding from the same seed model; this
page puts any number of runs on one page, each run one colour (the legend at the top): their iteration
tables, judge score distributions per iteration, response and pair lengths, pair counts, meta-judge
biases, per-step training loss and margins, drift alarms and eval results (win rates with their 95%
intervals; judge accuracy against gold labels per iteration, ``report.judge_accuracy``). Each run is read exactly as the single-run report reads it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import yaml
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator
from scipy import stats

from metareward.drift import (
    agreement_from_eval,
    agreement_name_from_eval,
    check_drift,
    stats_from_diagnostics,
)
from metareward.errors import InputError
from metareward.evaluation.diagnostics import IterationDiagnostics, diagnose_run, iteration_dirs
from metareward.files import atomic_write_text
from metareward.layout import CONFIG_FILE, RunLayout
from metareward.report.curves import run_train_logs
from metareward.report.examples import RunSettings, run_settings
from metareward.report.figures import table_eval, table_iterations
from metareward.report.html import figure, nan, page, table
from metareward.report.judge_accuracy import (
    COMPARE_FIGURE,
    accuracy,
    fig_accuracy,
    judge_suites,
    table_accuracy,
)
from metareward.report.page import alarms_html, load_eval, suites_fragment

COMPARE_FIGURES = ("compare-scores", "compare-lengths", "compare-bias", "compare-training", "compare-winrates",
                   COMPARE_FIGURE)


@dataclass
class Run:
    label: str
    path: Path
    colour: str
    settings: RunSettings
    diags: list[IterationDiagnostics]
    logs: dict[int, list[dict[str, Any]]]
    ev_path: Path | None
    ev: dict[str, Any] | None


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Folder names, or ``parent/name`` where two runs share a name (``a/tiny``, ``b/tiny``)."""
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    paths = [Path(p) for p in paths]
    if len({p.resolve() for p in paths}) != len(paths):
        raise InputError(f"runs: the same run directory is given twice ({', '.join(map(str, paths))})")
    colours = [to_hex(c) for c in plt.get_cmap("tab10").colors]
    runs = []
    for k, (p, label) in enumerate(zip(paths, labels_for(paths))):
        ev_path, ev = load_eval(p)
        runs.append(Run(label, p, colours[k % len(colours)], run_settings(p), diagnose_run(p),
                        run_train_logs(iteration_dirs(p)), ev_path, ev))
    return runs


def _iters(run: Run) -> list[IterationDiagnostics]:
    return [d for d in run.diags if d.iteration >= 1]


def fig_scores(runs: Sequence[Run]) -> str:
    n = max((len(_iters(r)) for r in runs), default=1) or 1
    fig, axes = plt.subplots(1, n, figsize=(min(4 * n, 12), 3.2), squeeze=False, sharey=True)
    grid = np.linspace(-0.5, 5.5, 300)
    for k, ax in enumerate(axes.flat):
        for r in runs:
            ds = _iters(r)
            if k >= len(ds) or not ds[k].scores:
                continue
            sc = ds[k].scores
            label = f"{r.label} (mean {np.mean(sc):.2f})"
            if len(set(sc)) >= 2:
                ax.plot(grid, stats.gaussian_kde(sc)(grid), color=r.colour, label=label)
            else:
                ax.hist(sc, bins=np.arange(-0.25, 5.5, 0.5), density=True, alpha=0.4, color=r.colour, label=label)
        ax.set_title(f"iteration {k + 1}", fontsize=9)
        ax.set_xlabel("judge score")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("density")
    fig.suptitle("Judge score distribution per iteration (Gaussian KDE, cf. paper Fig. 5)", fontsize=10)
    fig.tight_layout()
    return figure("compare-scores", fig, "One panel per iteration, one colour per run.")


def _series(run: Run, get) -> tuple[list[int], list[float]]:
    ds = _iters(run)
    return [d.iteration for d in ds], [nan(get(d)) for d in ds]


def fig_lengths(runs: Sequence[Run]) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for r in runs:
        xs, ys = _series(r, lambda d: np.mean(d.response_lengths) if d.response_lengths else None)
        axes[0].plot(xs, ys, marker="o", color=r.colour, label=r.label)
        for ls, side in (("-", "chosen"), ("--", "rejected")):
            xs, ys = _series(r, lambda d, s=side: getattr(d.actor_pairs, f"{s}_length_mean") if d.actor_pairs else None)
            axes[1].plot(xs, ys, ls=ls, marker="o", color=r.colour, label=f"{r.label} {side}")
        for ls, kind in (("-", "actor_pairs"), ("--", "judge_pairs")):
            xs, ys = _series(r, lambda d, k=kind: getattr(d, k).count if getattr(d, k) else 0)
            axes[2].plot(xs, ys, ls=ls, marker="o", color=r.colour, label=f"{r.label} {kind.split('_')[0]}")
    for ax, title, ylabel in ((axes[0], "Mean response length", "characters"),
                              (axes[1], "Actor pairs: chosen (solid) vs rejected (dashed)", "mean characters"),
                              (axes[2], "Pairs: actor (solid), judge (dashed)", "count")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return figure("compare-lengths", fig, "Lengths in characters; self-rewarding runs have no judge pairs.")


def fig_bias(runs: Sequence[Run]) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
    panels = (("first_position_rate", "first-position preference"), ("score_bias", "score bias (higher score wins)"),
              ("flip_rate", "verdict flips when order swapped"))
    for ax, (attr, title) in zip(axes, panels):
        for r in runs:
            xs, ys = _series(r, lambda d, a=attr: getattr(d.meta, a) if d.meta else None)
            if any(not np.isnan(y) for y in ys):
                ax.plot(xs, ys, marker="o", color=r.colour, label=r.label)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no meta-judgments", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("share of decisive verdicts")
    fig.tight_layout()
    return figure("compare-bias", fig, "Meta-judge biases (cf. paper Table 5); 0.5 (dotted) = no bias.")


def fig_training(runs: Sequence[Run]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
    for r in runs:
        offset = 0
        for n, (_, rows) in enumerate(sorted((i, x) for i, x in r.logs.items() if i >= 1)):
            steps = [offset + x["step"] for x in rows]
            for ax, key in zip(axes, ("loss", "rewards/margins")):
                pts = [(s, x[key]) for s, x in zip(steps, rows) if x.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=r.colour, label=r.label if n == 0 else None)
            offset = steps[-1]
            for ax in axes:
                ax.axvline(offset + 0.5, color=r.colour, lw=0.5, ls=":")
    for ax, title in zip(axes, ("DPO loss", "reward margin (chosen − rejected)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step, iterations one after another (dotted: iteration ends)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no train_log.jsonl", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return figure("compare-training", fig, "Per-step DPO metrics from each iteration's train_log.jsonl.")


def fig_winrates(runs: Sequence[Run]) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = sorted({m for r in runs if r.ev for m, v in r.ev["results"].items() if (v or {}).get("winrate")})
    xs = np.arange(len(labels))
    width = 0.8 / max(len(runs), 1)
    for k, r in enumerate(runs):
        if not r.ev:
            continue
        res = r.ev["results"]
        ys, lo, hi = [], [], []
        for m in labels:
            w = (res.get(m) or {}).get("winrate") or {}
            y = nan(w.get("win_rate"))
            ci = w.get("win_rate_ci95") or [None, None]
            ys.append(y)
            lo.append(y - nan(ci[0]))
            hi.append(nan(ci[1]) - y)
        ax.errorbar(xs + (k - (len(runs) - 1) / 2) * width, ys, yerr=np.nan_to_num(np.vstack([lo, hi])), fmt="o",
                    capsize=4, color=r.colour, label=r.label)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs, labels)
    ax.set_xlim(-0.5, max(len(labels), 1) - 0.5)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("win rate % vs each run's baseline")
    ax.set_title("Win rate with bootstrap 95% intervals", fontsize=10)
    if labels:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no eval.json with win rates in these runs", ha="center", transform=ax.transAxes)
    return figure("compare-winrates", fig, "Each run against its own eval baseline (see the eval tables below).")


def fig_judge_accuracy(runs: Sequence[Run]) -> str:
    """Each run's judges' accuracy on the first judge suite it measured (pointwise: the training judge)."""
    series = []
    for r in runs:
        suites = [s for s in judge_suites(r.ev) if s != "judge-injection"]
        if suites:
            labels = list(r.ev["suites"][suites[0]]["results"])  # type: ignore[index]
            series.append((f"{r.label}: {suites[0]}", r.colour, labels,
                           [accuracy(r.ev, suites[0], x, "pointwise") for x in labels]))
    return fig_accuracy(series, COMPARE_FIGURE, "Judge accuracy (pointwise) per model, each run in its colour")


def legend_html(runs: Sequence[Run]) -> str:
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:{r.colour}"></span>{html.escape(r.label)}</td>'
        f"<td>{html.escape(r.settings.mode)}</td><td><code>{html.escape(r.settings.model)}</code></td>"
        f"<td>{r.settings.seed}</td><td>{len(_iters(r))}</td><td><code>{html.escape(str(r.path.resolve()))}</code></td></tr>"
        for r in runs)
    return ('<table data-table="legend"><thead><tr><th>run</th><th>mode</th><th>seed model</th><th>seed</th>'
            f"<th>iterations</th><th>directory</th></tr></thead><tbody>{rows}</tbody></table>")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(data, list):
        return {k: v for n, val in enumerate(data) for k, v in _flat(val, f"{prefix}{n}.").items()}
    return {prefix.rstrip("."): data}


def config_differences(runs: Sequence[Run]) -> str:
    """The resolved-config fields (``config.yaml``) whose values differ between the runs (``run_dir`` aside)."""
    flats = []
    for r in runs:
        path = RunLayout(r.path).config
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
        flats.append(_flat(data or {}))
    keys = sorted({k for f in flats for k in f} - {"run_dir"})
    diff = [k for k in keys if len({repr(f.get(k, "–")) for f in flats}) > 1]
    if not diff:
        return f'<p class="note">The runs\' {CONFIG_FILE} files agree on every field (run_dir aside).</p>'
    rows = [[f"<code>{html.escape(k)}</code>"] + [html.escape(str(f.get(k, "–"))) for f in flats] for k in diff]
    return ('<p class="note">Config fields that differ (everything else is the same):</p>'
            + table("config-diff", ["field", *[r.label for r in runs]], rows))


def _run_heading(r: Run) -> str:
    return f'<h3><span class="swatch" style="background:{r.colour}"></span>{html.escape(r.label)}</h3>'


def build_compare(run_dirs: Sequence[str | Path]) -> str:
    """The comparison page of several runs (see module docstring)."""
    if len(run_dirs) < 2:
        raise InputError("compare: give at least two run directories")
    runs = load_runs(run_dirs)
    parts = [
        f"<h1>metareward: {len(runs)} runs side by side</h1>",
        '<p class="note">Each run has one colour in every figure. Lengths are in characters.</p>',
        legend_html(runs),
        config_differences(runs),
        "<h2>Drift alarms</h2>",
    ]
    for r in runs:
        alarms = check_drift([stats_from_diagnostics(d) for d in _iters(r)], agreement_from_eval(r.ev),
                             agreement_name_from_eval(r.ev))
        parts += [_run_heading(r), alarms_html(alarms)]
    parts.append("<h2>Iterations</h2>")
    for r in runs:
        parts += [_run_heading(r), table_iterations(r.diags)]
    parts += ["<h2>Judge scores</h2>", fig_scores(runs), "<h2>Lengths and pairs</h2>", fig_lengths(runs),
              "<h2>Meta-judge bias</h2>", fig_bias(runs), "<h2>Training</h2>", fig_training(runs),
              "<h2>Judge accuracy</h2>", fig_judge_accuracy(runs)]
    for r in runs:
        parts += [_run_heading(r), table_accuracy(r.diags, r.ev)]
    parts += ["<h2>Evaluation</h2>", fig_winrates(runs)]
    for r in runs:
        parts.append(_run_heading(r))
        if r.ev is None:
            parts.append('<p class="note">No eval.json in this run.</p>')
        else:
            parts += [f'<p class="note">From <code>{html.escape(str(r.ev_path))}</code>.</p>', table_eval(r.ev),
                      suites_fragment(r.ev)]
    return page("metareward: " + " vs ".join(r.label for r in runs), "\n".join(parts))


def write_compare(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    out = Path(out)
    atomic_write_text(out, build_compare(run_dirs))
    return out
