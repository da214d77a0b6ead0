"""The benchmark suites as an HTML fragment for the report page (``render_suites``).

Reads the ``suites`` block of ``eval.json`` (written by ``metareward eval --suite``; layout in
``docs/evaluation.md``, "Benchmark suites") and shows, per suite, one row per model/iteration with its
intervals, the sample size, and the judge -- marked **proxy** unless it is the benchmark's official
judge. Beside our numbers: the paper's values (Wu et al. 2024, Llama-3-8B-Instruct seed, GPT-4 judges;
Table 1 AlpacaEval 2, Table 2 Arena-Hard v0.1), labelled as the paper's. They are context, not a
target: our LC is alpaca_eval's minimal GLM (not the leaderboard's), our Arena-Hard is v2.0 (other
questions, baselines and judge), and a proxy judge or another seed model changes every number.
"""

from __future__ import annotations

import html
import math
from typing import Any

from metareward.layout import iteration_label, parse_iteration_label

# Paper Table 1 (AlpacaEval 2 vs GPT-4 Turbo; judge GPT-4 Turbo): LC win rate, win rate, length (chars)
PAPER_ALPACAEVAL2 = {
    "seed": ("Llama-3-8B-Instruct (seed)", 22.92, 22.57, 1899),
    "sft": ("SFT on EFT", 25.47, 25.10, 1943),
    **{iteration_label(i): (f"Meta-Rewarding iter {i}", lc, wr, chars) for i, lc, wr, chars in (
        (1, 27.85, 27.62, 1949),
        (2, 32.66, 33.29, 2001),
        (3, 35.45, 37.24, 2064),
        (4, 39.44, 39.45, 2003),
    )},
}
# Paper Table 2 (Arena-Hard v0.1: GPT-4-0314 baseline, gpt-4-1106-preview judge): score, 95% CI offsets
PAPER_ARENA_HARD_V01 = {
    "seed": ("Llama-3-8B-Instruct (seed)", 20.6, (-2.0, 1.8)),
    "sft": ("SFT on EFT", 24.2, (-2.0, 1.8)),
    iteration_label(4): ("Meta-Rewarding iter 4", 29.1, (-2.3, 2.1)),
}


def _n(x: Any, d: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _ci(pair: Any, d: int = 1) -> str:
    if not pair or any(v is None for v in pair):
        return ""
    return f" [{_n(pair[0], d)}, {_n(pair[1], d)}]"


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}%"


def _paper_key(label: str) -> str | None:
    if label == "seed":
        return "seed"
    return label if parse_iteration_label(label) is not None else None


def _judge_line(block: dict[str, Any]) -> str:
    who = html.escape(str(block.get("judge")))
    engine = html.escape(str(block.get("judge_engine")))
    official = ", ".join(html.escape(x) for x in block.get("official_judge") or [])
    if block.get("proxy", True):
        return (f"Judge: <b>{who}</b> ({engine}) — <b>proxy</b> (the official judge is {official}); "
                "these numbers are not comparable with the leaderboard or the paper.")
    return f"Judge: <b>{who}</b> ({engine}) — the official judge."


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='suite'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _alpaca(block: dict[str, Any]) -> str:
    rows = []
    for label, r in block.get("results", {}).items():
        paper = PAPER_ALPACAEVAL2.get(_paper_key(label) or "")
        rows.append([
            html.escape(label),
            f"{_n(r.get('win_rate'))} ± {_n(r.get('standard_error'))}",
            _n(r.get("lc_win_rate_minimal")) + _ci(r.get("lc_win_rate_minimal_ci95")),
            _n(r.get("avg_length"), 0),
            f"{block.get('n')}/{block.get('of')}",
            f"{paper[2]:.2f} / {paper[1]:.2f} LC / {paper[3]} chars ({html.escape(paper[0])})" if paper else "–",
        ])
    return (
        f"<h3>AlpacaEval 2 (vs GPT-4 Turbo)</h3><p>{_judge_line(block)} Win rate ± standard error; LC = "
        "alpaca_eval's <i>minimal</i> length-controlled GLM with a bootstrap 95% interval (not the "
        "leaderboard's LC, which needs hub data).</p>"
        + _table(["model", "win rate ± SE", "LC (minimal) [95%]", "length (chars)", "n / of",
                  "paper: win rate / LC / length (Llama-3-8B-Instruct, GPT-4 Turbo judge)"], rows)
    )


def _arena(block: dict[str, Any]) -> str:
    rows = []
    for label, r in block.get("results", {}).items():
        paper = PAPER_ARENA_HARD_V01.get(_paper_key(label) or "")
        cats = "; ".join(f"{html.escape(c)} {_n(v.get('score'))}{_ci(v.get('score_ci90'))}"
                         for c, v in (r.get("by_category") or {}).items())
        rows.append([
            html.escape(label),
            _n(r.get("score")) + _ci(r.get("score_ci90")),
            _n(r.get("bt_score")) + _ci(r.get("bt_score_ci90")),
            _n(r.get("style_controlled")) + _ci(r.get("style_controlled_ci90")),
            cats or "–",
            f"{r.get('questions_judged')}/{block.get('n')} (of {block.get('of')})",
            f"{paper[1]:.1f} ({paper[2][0]:+.1f}, {paper[2][1]:+.1f}) ({html.escape(paper[0])})" if paper else "–",
        ])
    return (
        f"<h3>Arena-Hard v2.0</h3><p>{_judge_line(block)} Score = mean battle score vs the category's baseline "
        "(strong verdicts weigh 3), bootstrap 90% interval; BT and style-controlled BT (length, headers, "
        "lists, bold). The paper's values are Arena-Hard <b>v0.1</b> (other questions, GPT-4-0314 baseline): "
        "not comparable.</p>"
        + _table(["model", "score [90%]", "BT [90%]", "style-controlled [90%]", "by category", "questions judged",
                  "paper (v0.1, GPT-4 Turbo judge)"], rows)
    )


def _ifeval(block: dict[str, Any]) -> str:
    rows = [[html.escape(label), _pct(r.get("prompt_strict")), _pct(r.get("prompt_loose")),
             _pct(r.get("instruction_strict")), _pct(r.get("instruction_loose")), f"{block.get('n')}/{block.get('of')}"]
            for label, r in block.get("results", {}).items()]
    return ("<h3>IFEval</h3><p>Checked by code (no judge). The paper reports no IFEval; SPaR (arXiv 2412.11605) "
            "reran Meta-Rewarding on Llama-3-8B-Instruct: 77.9 → 79.9 (their metric).</p>"
            + _table(["model", "prompt strict", "prompt loose", "instruction strict", "instruction loose", "n / of"],
                     rows))


def _mtbench(block: dict[str, Any]) -> str:
    rows = [[html.escape(label), _n(r.get("win_rate")) + _ci(r.get("win_rate_ci95")),
             _n(r.get("lc_win_rate")) + _ci(r.get("lc_win_rate_ci95")), html.escape(str(r.get("baseline"))),
             html.escape(str(r.get("judge"))) + " (proxy)", str(r.get("prompts"))]
            for label, r in block.get("results", {}).items()]
    return ("<h3>MT-Bench first turns: pairwise win rate</h3><p>Not MT-Bench's GPT-4 1–10 score; both orders, "
            "ties count half, bootstrap 95% intervals.</p>"
            + _table(["model", "win rate [95%]", "LC [95%]", "baseline", "judge", "n"], rows))


def render_suites(eval_data: dict) -> str:
    """An HTML fragment with every suite in ``eval_data["suites"]`` (empty string when there is none)."""
    suites = eval_data.get("suites") or {}
    parts = []
    for key, fn in (("alpacaeval2", _alpaca), ("arena-hard-v2", _arena), ("ifeval", _ifeval), ("mtbench", _mtbench)):
        if suites.get(key, {}).get("results"):
            parts.append(fn(suites[key]))
    if not parts:
        return ""
    return "<section class='suites'><h2>Benchmark suites</h2>" + "".join(parts) + "</section>"
