"""The run report's aggregate figures and tables, from ``evaluation.diagnostics`` and ``eval.json``.

* judge score distribution per iteration (paper Fig. 5: Gaussian KDE; a histogram when the scores
  take fewer than two distinct values), with the mean and share of non-integer scores;
* parse-failure and tie rates; response and judgment lengths; chosen/rejected lengths and counts of
  actor and judge pairs;
* meta-judge bias (paper Table 5): first-position preference (all pairs, equal-score pairs), score
  bias, and the position-flip rate, as a table and a plot;
* eval results: win rate and LC win rate with 95% intervals, judge agreement, instruction following,
  answer lengths.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from metareward.evaluation.diagnostics import IterationDiagnostics, summary
from metareward.report.html import figure as _figure
from metareward.report.html import fmt as _fmt
from metareward.report.html import nan as _nan
from metareward.report.html import table as _table

RUN_FIGURES = ("score-distribution", "rates", "lengths", "pair-lengths", "pair-counts", "meta-bias")
RUN_TABLES = ("iterations", "meta-bias", "judge-accuracy", "judge-published")  # the last two: report.judge_accuracy
EVAL_FIGURES = ("winrates", "eval-lengths")
EVAL_TABLES = ("eval",)


# ---------------------------------------------------------------- run figures


def fig_scores(diags: Sequence[IterationDiagnostics]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    grid = np.linspace(-0.5, 5.5, 400)
    for d in diags:
        if not d.scores:
            continue
        label = f"iter {d.iteration} (mean {d.score_mean:.2f}, n={len(d.scores)})"
        if len(set(d.scores)) >= 2:
            ax.plot(grid, stats.gaussian_kde(d.scores)(grid), label=label)
        else:
            ax.hist(d.scores, bins=np.arange(-0.25, 5.5, 0.5), density=True, alpha=0.5, label=label)
    ax.set_xlabel("judge score")
    ax.set_ylabel("density")
    ax.set_xlim(-0.5, 5.5)
    ax.set_title("Judge score distribution (Gaussian KDE, cf. paper Fig. 5)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no valid scores", ha="center", transform=ax.transAxes)
    return _figure("score-distribution", fig, "Density of valid judge scores per iteration.")


def _line(ax, xs, ys, label, **kw) -> None:
    ys = [_nan(y) for y in ys]
    if any(not math.isnan(y) for y in ys):
        ax.plot(xs, ys, marker="o", label=label, **kw)


def fig_rates(diags: Sequence[IterationDiagnostics]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [d.iteration for d in diags]
    _line(ax, xs, [d.parse_failure_rate for d in diags], "judge parse failures")
    _line(ax, xs, [d.prompt_tie_rate for d in diags], "prompts with all responses tied")
    _line(ax, xs, [d.response_pair_tie_rate for d in diags], "tied response pairs")
    _line(ax, xs, [d.non_integer_rate for d in diags], "non-integer scores")
    _line(ax, xs, [d.meta.no_verdict_rate if d.meta else None for d in diags], "meta-judge: no verdict")
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Parse failures and ties")
    ax.legend(fontsize=8)
    return _figure("rates", fig, "Shares of invalid judgments, ties and non-integer scores per iteration.")


def fig_lengths(diags: Sequence[IterationDiagnostics]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = [d.iteration for d in diags]
    for ax, attr, title in ((axes[0], "response_lengths", "actor responses"),
                            (axes[1], "judgment_lengths", "judgments")):
        data = [getattr(d, attr) or [0] for d in diags]
        ax.boxplot(data, tick_labels=[str(x) for x in xs], showmeans=True)
        ax.set_xlabel("iteration")
        ax.set_ylabel("characters")
        ax.set_title(f"Length of {title}")
    return _figure("lengths", fig, "Distribution of response and judgment lengths (characters; triangle = mean).")


def fig_pair_lengths(diags: Sequence[IterationDiagnostics]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = np.arange(len(diags))
    width = 0.2
    series = [
        ("actor chosen", [d.actor_pairs.chosen_length_mean if d.actor_pairs else None for d in diags]),
        ("actor rejected", [d.actor_pairs.rejected_length_mean if d.actor_pairs else None for d in diags]),
        ("judge chosen", [d.judge_pairs.chosen_length_mean if d.judge_pairs else None for d in diags]),
        ("judge rejected", [d.judge_pairs.rejected_length_mean if d.judge_pairs else None for d in diags]),
    ]
    for k, (label, ys) in enumerate(series):
        ax.bar(xs + (k - 1.5) * width, [0 if y is None or math.isnan(y) else y for y in ys], width, label=label)
    ax.set_xticks(xs, [str(d.iteration) for d in diags])
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean characters")
    ax.set_title("Chosen vs rejected length of the preference pairs")
    ax.legend(fontsize=8)
    return _figure("pair-lengths", fig, "Mean length of chosen and rejected sides of actor and judge pairs.")


def fig_pair_counts(diags: Sequence[IterationDiagnostics]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.0))
    xs = np.arange(len(diags))
    ax.bar(xs - 0.2, [d.actor_pairs.count if d.actor_pairs else 0 for d in diags], 0.4, label="actor pairs")
    ax.bar(xs + 0.2, [d.judge_pairs.count if d.judge_pairs else 0 for d in diags], 0.4, label="judge pairs")
    ax.plot(xs, [d.n_prompts for d in diags], "k--", marker="x", label="prompts")
    ax.set_xticks(xs, [str(d.iteration) for d in diags])
    ax.set_xlabel("iteration")
    ax.set_ylabel("count")
    ax.set_title("Preference pairs per iteration")
    ax.legend(fontsize=8)
    return _figure("pair-counts", fig, "Number of actor and judge DPO pairs (and prompts) per iteration.")


def fig_meta_bias(diags: Sequence[IterationDiagnostics]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [d.iteration for d in diags]
    m = [d.meta for d in diags]
    _line(ax, xs, [x.first_position_rate if x else None for x in m], "first-position preference")
    _line(ax, xs, [x.first_position_rate_same_score if x else None for x in m], "first position, equal scores")
    _line(ax, xs, [x.score_bias if x else None for x in m], "score bias (higher score wins)")
    _line(ax, xs, [x.flip_rate if x else None for x in m], "verdict flips when order swapped")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("iteration")
    ax.set_ylabel("share of decisive verdicts")
    ax.set_title("Meta-judge biases (cf. paper Table 5)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no meta-judgments", ha="center", transform=ax.transAxes)
    return _figure("meta-bias", fig, "0.5 (dotted) = no bias; flips: the same position won both orders.")


def table_iterations(diags: Sequence[IterationDiagnostics]) -> str:
    header = ["iter", "prompts", "responses", "judgments", "mean score", "parse failures", "prompt ties",
              "pair ties", "resp. length", "actor pairs", "actor chosen/rejected len", "judge pairs",
              "judge chosen/rejected len"]
    rows = []
    for d in diags:
        s = summary(d)
        ap, jp = s["actor_pairs"] or {}, s["judge_pairs"] or {}
        rows.append([
            _fmt(d.iteration, "int"), _fmt(s["prompts"], "int"), _fmt(s["responses"], "int"),
            _fmt(s["judgments"], "int"), _fmt(s["score_mean"]), _fmt(s["parse_failure_rate"], "pct"),
            _fmt(s["prompt_tie_rate"], "pct"), _fmt(s["response_pair_tie_rate"], "pct"),
            _fmt(s["response_length_mean"]), _fmt(ap.get("count"), "int"),
            f"{_fmt(ap.get('chosen_length_mean'))} / {_fmt(ap.get('rejected_length_mean'))}",
            _fmt(jp.get("count"), "int"),
            f"{_fmt(jp.get('chosen_length_mean'))} / {_fmt(jp.get('rejected_length_mean'))}",
        ])
    return _table("iterations", header, rows)


def table_meta_bias(diags: Sequence[IterationDiagnostics]) -> str:
    header = ["iter", "meta-judgments", "no verdict", "first-position preference", "… on equal-score pairs",
              "score bias", "pairs with different scores", "both orders decisive", "flip rate"]
    rows = []
    for d in diags:
        m = d.meta
        if m is None:
            rows.append([_fmt(d.iteration, "int")] + ["–"] * (len(header) - 1))
            continue
        rows.append([
            _fmt(d.iteration, "int"), _fmt(m.n, "int"), _fmt(m.no_verdict_rate, "pct"),
            _fmt(m.first_position_rate, "pct"), _fmt(m.first_position_rate_same_score, "pct"),
            _fmt(m.score_bias, "pct"), _fmt(m.different_score_decisive, "int"), _fmt(m.both_decisive, "int"),
            _fmt(m.flip_rate, "pct"),
        ])
    return _table("meta-bias", header, rows)


# ---------------------------------------------------------------- eval section


def fig_winrates(ev: dict[str, Any]) -> str:
    res = {k: v["winrate"] for k, v in ev["results"].items() if v.get("winrate")}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = list(res)
    xs = np.arange(len(labels))
    for off, key, ci, name in ((-0.12, "win_rate", "win_rate_ci95", "win rate"),
                               (0.12, "lc_win_rate", "lc_win_rate_ci95", "LC win rate")):
        ys = np.array([_nan(res[k].get(key)) for k in labels])
        cis = [res[k].get(ci) or [None, None] for k in labels]
        lo = np.array([y - _nan(c[0]) for y, c in zip(ys, cis)])
        hi = np.array([_nan(c[1]) - y for y, c in zip(ys, cis)])
        ax.errorbar(xs + off, ys, yerr=np.nan_to_num(np.vstack([lo, hi])), fmt="o", capsize=4, label=name)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs, labels)
    ax.set_xlim(-0.5, max(len(labels), 1) - 0.5)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("% vs baseline")
    baseline = next(iter(res.values()))["baseline"] if res else "?"
    ax.set_title(f"Win rate vs {baseline} with bootstrap 95% intervals")
    if labels:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no win rates in eval.json", ha="center", transform=ax.transAxes)
    return _figure("winrates", fig, "Win rate (ties = ½) and AlpacaEval-style length-controlled win rate.")


def fig_eval_lengths(ev: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.0))
    data = {k: v["length"]["lengths"] for k, v in ev["results"].items() if v.get("length", {}).get("lengths")}
    if data:
        ax.boxplot(list(data.values()), tick_labels=list(data), showmeans=True)
    else:
        ax.text(0.5, 0.5, "no answer lengths in eval.json", ha="center", transform=ax.transAxes)
    ax.set_ylabel("characters")
    ax.set_title("Answer length per model (eval prompt set)")
    return _figure("eval-lengths", fig, "Length of each model's answers on the eval prompt set.")


def table_eval(ev: dict[str, Any]) -> str:
    header = ["model", "agreement", "agreement w/o ties", "Spearman", "judge parse rate", "win rate [95% CI]",
              "LC win rate [95% CI]", "W/T/L", "IF prompt strict", "IF instr. loose", "mean length"]
    rows = []
    for label, r in ev["results"].items():
        a, w, f, n = r.get("agreement") or {}, r.get("winrate") or {}, r.get("ifbench") or {}, r.get("length") or {}

        def wr(key: str, ci: str, w: dict[str, Any] = w) -> str:
            if w.get(key) is None:
                return "–"
            lo, hi = w.get(ci) or [None, None]
            return f"{w[key]:.1f} [{_fmt(lo)}, {_fmt(hi)}]"

        rows.append([
            html.escape(label), _fmt(a.get("agreement"), "pct"), _fmt(a.get("agreement_without_ties"), "pct"),
            _fmt(a.get("spearman")), _fmt(a.get("parse_rate"), "pct"), wr("win_rate", "win_rate_ci95"),
            wr("lc_win_rate", "lc_win_rate_ci95"),
            f"{w['wins']}/{w['ties']}/{w['losses']}" if w else "–",
            _fmt(f.get("prompt_strict"), "pct"), _fmt(f.get("instruction_loose"), "pct"), _fmt(n.get("mean")),
        ])
    return _table("eval", header, rows)
