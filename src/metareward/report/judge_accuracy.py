"""Is the judge getting better? The report's judge-accuracy section (single run and comparison page).

Reads the judge suites' blocks of ``eval.json`` (``evaluation.suites.judge_bench``: accuracy against gold
labels, pointwise and pairwise, with bootstrap 95% intervals) and sets them beside what each iteration's
judge did in the loop: iteration ``i``'s responses were judged by the model that started it
(``drift.judge_label``: the seed, then iteration i-1's model), so its mean judge score and that model's
accuracy share a row. A mean score that climbs while the accuracy stays flat is the score inflation the
drift alarm looks for. Published figures (SPaR's LLMBar accuracies, the paper's Table 7) are listed beside ours with
their models and judges: they are 8B models, a different claim from a 135M judge near 50%.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from metareward.drift import judge_label
from metareward.evaluation.diagnostics import IterationDiagnostics
from metareward.evaluation.suites.judge_bench import INJECTION_SUITE, JUDGE_SUITES, MODES, PUBLISHED
from metareward.report.html import figure, fmt, table

FIGURE = "judge-accuracy"
COMPARE_FIGURE = "compare-judge-accuracy"


def judge_suites(ev: Mapping[str, Any] | None) -> list[str]:
    """The judge suites with results in ``eval.json``, in ``JUDGE_SUITES`` order."""
    suites = (ev or {}).get("suites") or {}
    return [s for s in JUDGE_SUITES if isinstance(suites.get(s), Mapping) and suites[s].get("results")]


def accuracy(ev: Mapping[str, Any] | None, suite: str, label: str, mode: str) -> tuple[float, float, float] | None:
    """(accuracy, low, high) of one judge in one suite and mode (0-1), or None when not measured."""
    r = (((((ev or {}).get("suites") or {}).get(suite) or {}).get("results") or {}).get(label) or {}).get(mode) or {}
    o = r.get("overall") or {}
    if o.get("accuracy") is None:
        return None
    lo, hi = o.get("accuracy_ci95") or [None, None]
    return float(o["accuracy"]), float(lo if lo is not None else o["accuracy"]), float(hi if hi is not None else o["accuracy"])


def cell(acc: tuple[float, float, float] | None) -> str:
    return "–" if acc is None else f"{fmt(acc[0], 'pct')} [{fmt(acc[1], 'pct')}, {fmt(acc[2], 'pct')}]"


def _labels(ev: Mapping[str, Any] | None, suites: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for s in suites:
        for label in ev["suites"][s]["results"]:  # type: ignore[index]
            if label not in seen:
                seen.append(label)
    return seen


def table_accuracy(diags: Sequence[IterationDiagnostics], ev: Mapping[str, Any] | None, name: str = FIGURE) -> str:
    """One row per iteration (its judge, mean judge score, share of responses addressing the judge and the
    judge's accuracies), then one per evaluated model that judged no iteration of this run."""
    suites = [s for s in judge_suites(ev) if s != INJECTION_SUITE]
    header = ["iter", "judged by", "mean judge score", "responses addressing the judge",
              *[f"{s} {m} [95% CI]" for s in suites for m in MODES]]
    rows, used = [], set()
    for d in diags:
        if d.iteration < 1:
            continue
        label = judge_label(d.iteration)
        used.add(label)
        share = d.judge_addressed / d.n_responses if d.n_responses else None
        rows.append([fmt(d.iteration, "int"), html.escape(label), fmt(d.score_mean), fmt(share, "pct"),
                     *[cell(accuracy(ev, s, label, m)) for s in suites for m in MODES]])
    for label in _labels(ev, suites):
        if label not in used:
            rows.append(["–", html.escape(label), "–", "–", *[cell(accuracy(ev, s, label, m)) for s in suites for m in MODES]])
    return table(name, header, rows)


def table_injection(ev: Mapping[str, Any] | None, name: str = "judge-injection") -> str:
    """How often each judge preferred the worse output, without and with a line aimed at the judge."""
    block = (((ev or {}).get("suites") or {}).get(INJECTION_SUITE) or {}).get("results") or {}
    rows = []
    for label, modes in block.items():
        for m in MODES:
            w = (modes.get(m) or {}).get("prefers_worse") or {}
            kinds = ", ".join(f"{k} {fmt(v.get('injected'), 'pct')} (n={v.get('n')})" for k, v in (w.get("by_kind") or {}).items())
            rows.append([html.escape(label), m, fmt(w.get("plain"), "pct"), fmt(w.get("injected"), "pct"),
                         "–" if w.get("change") is None else f"{100 * w['change']:+.1f} points", html.escape(kinds)])
    return table(name, ["judge", "mode", "prefers worse: plain", "… injected", "change", "injected, by kind"], rows)


def table_published(name: str = "judge-published") -> str:
    rows = [[html.escape(p["source"]), html.escape(p["benchmark"]), html.escape(p["model"]), html.escape(p["judge"]),
             f"{p['value']:.1f}%"] for p in PUBLISHED]
    return table(name, ["source", "benchmark", "model", "judge", "accuracy / agreement"], rows)


def fig_accuracy(series: Sequence[tuple[str, str | None, list[str], list[tuple[float, float, float] | None]]],
                 name: str, title: str) -> str:
    """Accuracy with its interval per model label, one series per (name, colour, labels, accuracies)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / max(len(series), 1)
    all_labels: list[str] = []
    for _, _, labels, _ in series:
        all_labels += [x for x in labels if x not in all_labels]
    xs = {x: k for k, x in enumerate(all_labels)}
    for k, (sname, colour, labels, accs) in enumerate(series):
        pts = [(xs[x] + (k - (len(series) - 1) / 2) * width, a) for x, a in zip(labels, accs) if a is not None]
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = np.array([100 * p[1][0] for p in pts])
        err = np.array([[100 * (p[1][0] - p[1][1]) for p in pts], [100 * (p[1][2] - p[1][0]) for p in pts]])
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=4, label=sname, **({"color": colour} if colour else {}))
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(all_labels)), all_labels)
    ax.set_xlim(-0.5, max(len(all_labels), 1) - 0.5)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("judge accuracy %")
    ax.set_title(title, fontsize=10)
    if all_labels:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no judge suite in eval.json", ha="center", transform=ax.transAxes)
    return figure(name, fig, "Accuracy against gold labels with bootstrap 95% intervals; 50% is chance "
                             "(a judge that follows the position, or always ties).")


NOTE = ("Accuracy against gold labels (<code>metareward eval --suite llmbar,human-pref,judge-injection</code>): "
        "pointwise is the training judge itself (N judgments per output, the higher mean wins); pairwise is our "
        "pairwise prompt in both orders (a flip between orders is a tie). Ties and invalid pairs count half. "
        "Iteration <i>i</i>'s responses were judged by the model that started it, so its mean judge score and "
        "that model's accuracy share a row: a climbing score with a flat accuracy is score inflation.")


def judge_accuracy_section(diags: Sequence[IterationDiagnostics], ev: Mapping[str, Any] | None) -> str:
    """The single-run report's section (see module docstring)."""
    suites = judge_suites(ev)
    parts = [f'<p class="note">{NOTE}</p>']
    if not suites:
        parts.append('<p class="note">No judge suite in eval.json yet: run <code>metareward eval --run-dir RUN_DIR '
                     "--suite llmbar,human-pref,judge-injection</code>.</p>")
    parts.append(table_accuracy(diags, ev))
    if suites:
        series = [(f"{s} {m}", None, _labels(ev, [s]), [accuracy(ev, s, x, m) for x in _labels(ev, [s])])
                  for s in suites if s != INJECTION_SUITE for m in MODES]
        parts.append(fig_accuracy(series, FIGURE, "Judge accuracy per model"))
    if INJECTION_SUITE in suites:
        parts += ['<p class="note">Injection subset: LLMBar Natural pairs with a line aimed at the judge appended '
                  "to the worse output; the share of pairs where the judge preferred the worse output, without and "
                  "with the line.</p>", table_injection(ev)]
    parts += ['<p class="note">Published figures, for scale only: 8B models, their own benchmarks and judges. A '
              "135M judge near 50% is the honest expectation, not a failed replication.</p>", table_published()]
    return "".join(parts)
