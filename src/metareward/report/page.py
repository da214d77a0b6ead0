"""The run report page: ``build_report(run_dir)`` -> one self-contained HTML string.

Sections, in order: drift alarms (``metareward.drift``, thresholds in the text), the iteration table,
judge scores, judge accuracy against gold labels per iteration (``report.judge_accuracy``), lengths and
pairs, meta-judge bias, training curves (``report.curves``), examples
(``report.examples``) and the evaluation (``RUN_DIR/eval/eval.json`` when ``metareward eval`` wrote one,
with the eval suites' own fragment from ``metareward.evaluation.suite_report.render_suites`` when that
module is installed).
"""

from __future__ import annotations

import html
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metareward.drift import (
    AGREEMENT_FLAT,
    GAMING_RISE,
    LENGTH_SLACK,
    POSITION_SHARE,
    SCORE_RISE,
    Alarm,
    agreement_from_eval,
    agreement_name_from_eval,
    check_drift,
    stats_from_diagnostics,
)
from metareward.errors import InputError
from metareward.evaluation.diagnostics import diagnose_run, iteration_dirs
from metareward.files import atomic_write_text
from metareward.layout import RunLayout
from metareward.report.curves import training_section
from metareward.report.examples import DEFAULT_EXAMPLES, examples_section, run_settings
from metareward.report.figures import (
    fig_eval_lengths,
    fig_lengths,
    fig_meta_bias,
    fig_pair_counts,
    fig_pair_lengths,
    fig_rates,
    fig_scores,
    fig_winrates,
    table_eval,
    table_iterations,
    table_meta_bias,
)
from metareward.report.html import page
from metareward.report.judge_accuracy import judge_accuracy_section


def find_eval(run_dir: Path) -> Path | None:
    for p in (RunLayout(run_dir).eval_dir / "eval.json", run_dir / "eval.json"):
        if p.is_file():
            return p
    return None


def load_eval(run_dir: Path, eval_path: str | Path | None = None) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, parsed eval.json) of a run, or (None, None); a malformed file is an InputError naming it."""
    ev_path = Path(eval_path) if eval_path else find_eval(run_dir)
    if ev_path is None:
        return None, None
    try:
        ev = json.loads(ev_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{ev_path}: cannot read eval results ({e})") from None
    if not isinstance(ev, dict) or not isinstance(ev.get("results"), dict):
        raise InputError(f"{ev_path}: results: expected the eval.json written by metareward eval")
    return ev_path, ev


def suites_fragment(ev: dict[str, Any]) -> str:
    """The eval suites' HTML fragment (``metareward.evaluation.suite_report.render_suites``), or "" when
    that module is not part of this installation."""
    try:
        mod = importlib.import_module("metareward.evaluation.suite_report")
    except ModuleNotFoundError as e:
        if e.name == "metareward.evaluation.suite_report":
            return ""
        raise
    return str(mod.render_suites(ev) or "")


def eval_section(ev_path: Path | None, ev: dict[str, Any] | None) -> str:
    if ev is None or ev_path is None:
        return ('<p class="note">No eval.json found; run <code>metareward eval --run-dir RUN_DIR</code> first to add '
                "win rates and judge agreement here (the score-inflation alarm needs the agreement).</p>")
    opts = ev.get("options", {})
    return "".join([
        f'<p class="note">From <code>{html.escape(str(ev_path))}</code>: prompt set '
        f"<code>{html.escape(str(opts.get('prompt_set', '?')))}</code> "
        f"({ev.get('prompt_set', {}).get('prompts', '?')} prompts), baseline "
        f"<code>{html.escape(str(opts.get('baseline', '?')))}</code>, judge "
        f"<code>{html.escape(str(opts.get('judge') or opts.get('baseline', '?')))}</code>; agreement set "
        f"<code>{html.escape(str(opts.get('agreement_set', '?')))}</code>.</p>",
        table_eval(ev), fig_winrates(ev), fig_eval_lengths(ev), suites_fragment(ev),
    ])


THRESHOLDS = (f"score inflation: mean score up by more than {SCORE_RISE:g} points while judge agreement changes by at "
              f"most ±{100 * AGREEMENT_FLAT:g} points or falls; position bias: one position wins more than "
              f"{100 * POSITION_SHARE:g}% of decisive meta-judge verdicts; length growth: mean response length grows "
              f"by more than the previous actor pairs' chosen−rejected gap + {100 * LENGTH_SLACK:g}% of the previous "
              "mean; judge pairs collapsed: a meta-judged iteration with 0 judge pairs; judge gaming: the share of responses "
              f"with text aimed at the judge rises by more than {100 * GAMING_RISE:g} points")


def alarms_html(alarms: Sequence[Alarm]) -> str:
    if not alarms:
        return f'<div class="ok" data-alarms="0">No drift alarm fired. Checked: {html.escape(THRESHOLDS)}.</div>'
    items = "".join(f'<div class="alarm" data-alarm="{a.kind}">{html.escape(str(a))}</div>' for a in alarms)
    return f'<div data-alarms="{len(alarms)}">{items}<p class="note">Checks: {html.escape(THRESHOLDS)}.</p></div>'


TOC = (("alarms", "Drift alarms"), ("iterations", "Iterations"), ("scores", "Judge scores"),
       ("judge-accuracy-h", "Judge accuracy"),
       ("lengths", "Lengths and pairs"), ("bias", "Meta-judge bias"), ("training", "Training curves"),
       ("examples-h", "Examples"), ("evaluation", "Evaluation"))


def build_report(run_dir: str | Path, eval_path: str | Path | None = None, examples: int | None = DEFAULT_EXAMPLES,
                 prompts: Sequence[str] = ()) -> str:
    """The report page of one run as an HTML string (see module docstring). ``examples``: prompts shown
    per iteration (None: all); ``prompts``: prompt ids always shown."""
    run_dir = Path(run_dir)
    diags = diagnose_run(run_dir)
    iters = iteration_dirs(run_dir)
    settings = run_settings(run_dir)
    ev_path, ev = load_eval(run_dir, eval_path)
    alarms = check_drift([stats_from_diagnostics(d) for d in diags if d.iteration >= 1], agreement_from_eval(ev),
                         agreement_name_from_eval(ev))
    toc = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in TOC)
    body = "\n".join([
        f"<h1>metareward run report: {html.escape(run_dir.name)}</h1>",
        f'<p class="note">Run directory <code>{html.escape(str(run_dir.resolve()))}</code>; seed model '
        f"<code>{html.escape(settings.model)}</code>; mode <code>{html.escape(settings.mode)}</code>; {len(diags)} "
        f"iteration(s). Lengths are in characters.</p><p class=\"note\">{toc}</p>",
        '<h2 id="alarms">Drift alarms</h2>', alarms_html(alarms),
        '<h2 id="iterations">Iterations</h2>', table_iterations(diags),
        '<h2 id="scores">Judge scores</h2>', fig_scores(diags), fig_rates(diags),
        '<h2 id="judge-accuracy-h">Judge accuracy</h2>', judge_accuracy_section(diags, ev),
        '<h2 id="lengths">Lengths and pairs</h2>', fig_lengths(diags), fig_pair_lengths(diags), fig_pair_counts(diags),
        '<h2 id="bias">Meta-judge bias</h2>',
        '<p class="note">Over decisive verdicts (A or B). Score bias: on pairs of judgments with different '
        "scores, the share won by the higher-scoring judgment (paper Table 5 reports 63.04% at iteration 1 "
        "and 97.68% at iteration 2). Flip rate: of the judgment pairs meta-judged in both orders with two "
        "decisive verdicts, the share where the same position won both times.</p>",
        table_meta_bias(diags), fig_meta_bias(diags),
        '<h2 id="training">Training curves</h2>', training_section(iters),
        '<h2 id="examples-h">Examples</h2>', examples_section(run_dir, iters, examples, prompts, run_dir.name),
        '<h2 id="evaluation">Evaluation</h2>', eval_section(ev_path, ev),
    ])
    return page(f"metareward report: {run_dir.name}", body, script=True)


def write_report(run_dir: str | Path, out: str | Path | None = None, eval_path: str | Path | None = None,
                 examples: int | None = DEFAULT_EXAMPLES, prompts: Sequence[str] = ()) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) atomically; returns its path."""
    out = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir, eval_path, examples, prompts))
    return out
