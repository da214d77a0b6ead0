"""Drift alarms: the failure modes of a self-rewarding loop that the paper warns about, as checks on numbers.

Each check compares an iteration with the one before it (or looks at one iteration alone) and, when it
fires, returns an ``Alarm`` whose message states the measured values *and the threshold*, so a reader
can judge it without looking up this module. The checks (``docs/method.md`` §5.6-§5.7 describe the
biases behind them):

* **score inflation** -- the mean judge score rose by more than ``SCORE_RISE`` points (0-5 scale) from
  one iteration to the next while the judge's agreement with human rankings did not rise by more than
  ``AGREEMENT_FLAT`` (absolute). Iteration ``i``'s scores are given by the model that starts iteration
  ``i``: eval label ``seed`` for ``i = 1``, ``iter_<i-1>`` after. Agreement comes from ``eval.json``
  (``metareward eval``): the judge's accuracy against gold labels when the judge suites ran
  (``AGREEMENT_SOURCES``: LLMBar, else the human-vote sets; pointwise, the way the training judge
  scores), else its agreement on the ranked set of the ``agreement`` part; when either value is
  missing the alarm still fires and says the agreement is unknown (a rising mean alone is then not
  evidence of a better actor *or* of a worse judge);
* **meta-judge position bias** -- the meta-judge preferred the same position (first, or second) in more
  than ``POSITION_SHARE`` of its decisive (A or B) verdicts;
* **length growth** -- the mean response length grew from iteration ``i-1`` to ``i`` by more than what
  iteration ``i-1``'s actor pairs taught: their mean chosen-minus-rejected length gap (taken as 0 when
  chosen responses were shorter), plus ``LENGTH_SLACK`` of the earlier mean length for sampling noise.
  DPO on pairs whose chosen side is longer by ``g`` characters pushes length up by about ``g`` at most
  per round; growth beyond it is length drift that the pairs did not ask for;
* **judge pairs collapsed** -- an iteration ran the meta-judge but produced no judge pair (every
  meta-judged response skipped: tied Elo, same scores, too long), so the judge was not trained on it;
* **judge gaming** -- the share of the actor's responses that contain text aimed at the judge (a score
  statement, a request to the grader, the rubric's wording: ``evaluation.judge_addressed``) rose by
  more than ``GAMING_RISE`` (absolute) from one iteration to the next. A self-rewarding actor is paid
  by its own judge; such text is how it could learn to be paid without answering better.

Inputs are plain numbers (``IterationStats``), built from ``evaluation.diagnostics`` by the report and by
``summary_alarms`` for the end-of-iteration summary. Missing numbers (a stage that has not run, a
self-rewarding run without meta-judge) skip the check that needs them rather than fire it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareward.layout import RunLayout, iteration_label

SCORE_RISE = 0.1
"""Score inflation: minimum rise of the mean judge score (points on the 0-5 scale) between iterations."""
AGREEMENT_FLAT = 0.01
"""Score inflation: agreement changes of at most this (absolute, 0-1) count as flat."""
POSITION_SHARE = 0.9
"""Position bias: share of decisive meta-judge verdicts won by one position above which the alarm fires."""
LENGTH_SLACK = 0.1
"""Length growth: allowed growth beyond the chosen-rejected gap, as a share of the earlier mean length."""
GAMING_RISE = 0.02
"""Judge gaming: rise of the share of responses with judge-addressed text (absolute, 0-1) above which it fires."""
AGREEMENT_SOURCES = (("llmbar", "pointwise"), ("human-pref", "pointwise"))
"""Where the score-inflation alarm reads the judge's agreement in eval.json, first found first: the judge
suites' accuracy (``suites[suite].results[label][mode].overall.accuracy``); else ``results[label].agreement``."""

TOL = 1e-9
"""Values within this of a threshold count as at the threshold (3.1 - 3.0 is 0.10000000000000009)."""

KINDS = ("score_inflation", "position_bias", "length_growth", "judge_pairs_collapsed", "judge_gaming")


@dataclass(frozen=True)
class IterationStats:
    """The numbers the checks read for one iteration (None: not measured, the check is skipped).

    ``decisive`` / ``first_position_wins``: the meta-judge's A-or-B verdicts and how many went to position
    A (None without meta-judgments). ``judge_pairs``: judge pairs built, None when no meta-judge ran.
    ``judge_addressed``: responses containing judge-addressed text, of ``responses``. Lengths in characters."""

    iteration: int
    score_mean: float | None = None
    response_length_mean: float | None = None
    actor_chosen_length_mean: float | None = None
    actor_rejected_length_mean: float | None = None
    decisive: int | None = None
    first_position_wins: int | None = None
    judge_pairs: int | None = None
    judge_addressed: int | None = None
    responses: int | None = None


@dataclass(frozen=True)
class Alarm:
    """One fired check: ``kind`` (one of ``KINDS``), the iteration it concerns, and a self-contained message."""

    kind: str
    iteration: int
    message: str

    def __str__(self) -> str:
        return f"iteration {self.iteration}: {self.message}"


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def judge_label(iteration: int) -> str:
    """The eval label of the model that judged iteration ``iteration``'s responses."""
    return "seed" if iteration == 1 else iteration_label(iteration - 1)


def score_inflation(prev: IterationStats, cur: IterationStats, agreement: Mapping[str, float | None],
                    name: str = "judge agreement") -> Alarm | None:
    a, b = _num(prev.score_mean), _num(cur.score_mean)
    if a is None or b is None or b - a <= SCORE_RISE + TOL:
        return None
    la, lb = judge_label(prev.iteration), judge_label(cur.iteration)
    ga, gb = _num(agreement.get(la)), _num(agreement.get(lb))
    head = (f"score inflation: mean judge score rose {a:.2f} -> {b:.2f} (+{b - a:.2f}, threshold +{SCORE_RISE:g} "
            f"points)")
    if ga is None or gb is None:
        missing = ", ".join(x for x, g in ((la, ga), (lb, gb)) if g is None)
        return Alarm("score_inflation", cur.iteration,
                     f"{head}; {name} unknown (no eval.json agreement for {missing}: run metareward eval), "
                     "so the rise cannot be told apart from a more lenient judge")
    if gb - ga > AGREEMENT_FLAT + TOL:
        return None
    trend = "flat" if abs(gb - ga) <= AGREEMENT_FLAT + TOL else "down"
    return Alarm("score_inflation", cur.iteration,
                 f"{head} while {name} was {trend}: {100 * ga:.1f}% ({la}) -> {100 * gb:.1f}% ({lb}) "
                 f"(flat = within ±{100 * AGREEMENT_FLAT:g} points)")


def position_bias(cur: IterationStats) -> Alarm | None:
    n, first = cur.decisive, cur.first_position_wins
    if not n or first is None:
        return None
    for name, wins in (("first", first), ("second", n - first)):
        if wins / n > POSITION_SHARE + TOL:
            return Alarm("position_bias", cur.iteration,
                         f"meta-judge position bias: the {name} position won {wins} of {n} decisive verdicts "
                         f"({100 * wins / n:.1f}%, threshold {100 * POSITION_SHARE:g}%)")
    return None


def length_growth(prev: IterationStats, cur: IterationStats) -> Alarm | None:
    a, b = _num(prev.response_length_mean), _num(cur.response_length_mean)
    c, r = _num(prev.actor_chosen_length_mean), _num(prev.actor_rejected_length_mean)
    if a is None or b is None or c is None or r is None:
        return None
    gap = max(c - r, 0.0)
    allowed = gap + LENGTH_SLACK * a
    if b - a <= allowed + TOL:
        return None
    return Alarm("length_growth", cur.iteration,
                 f"length growth: mean response length grew {a:.0f} -> {b:.0f} chars (+{b - a:.0f}), more than "
                 f"iteration {prev.iteration}'s actor pairs allow: chosen-rejected gap {c - r:+.0f} chars "
                 f"(counted as {gap:.0f}) + {100 * LENGTH_SLACK:g}% of {a:.0f} = {allowed:.0f} chars")


def judge_pairs_collapsed(prev: IterationStats | None, cur: IterationStats) -> Alarm | None:
    if cur.judge_pairs is None or cur.judge_pairs > 0:
        return None
    before = (f" (iteration {prev.iteration} had {prev.judge_pairs})"
              if prev is not None and prev.judge_pairs is not None else "")
    return Alarm("judge_pairs_collapsed", cur.iteration,
                 f"judge pairs collapsed: the meta-judge ran but 0 judge pairs were built{before} "
                 "(threshold: fewer than 1); the judge is not trained this iteration")


def judge_gaming(prev: IterationStats, cur: IterationStats) -> Alarm | None:
    if not prev.responses or not cur.responses or prev.judge_addressed is None or cur.judge_addressed is None:
        return None
    a, b = prev.judge_addressed / prev.responses, cur.judge_addressed / cur.responses
    if b - a <= GAMING_RISE + TOL:
        return None
    return Alarm("judge_gaming", cur.iteration,
                 f"judge gaming: the share of actor responses with text aimed at the judge (a score statement, "
                 f"a request to the grader, the rubric's wording) rose {100 * a:.1f}% ({prev.judge_addressed}/"
                 f"{prev.responses}) -> {100 * b:.1f}% ({cur.judge_addressed}/{cur.responses}) "
                 f"(threshold +{100 * GAMING_RISE:g} points)")


def check_drift(stats: Sequence[IterationStats], agreement: Mapping[str, float | None] | None = None,
                agreement_name: str = "judge agreement") -> list[Alarm]:
    """Every alarm over a run's iterations (in iteration order); ``agreement`` maps eval labels
    (``seed``, ``iter_<i>``) to the judge's agreement (0-1: ``agreement_from_eval``), which the
    messages call ``agreement_name`` (``agreement_name_from_eval``)."""
    agreement = agreement or {}
    out: list[Alarm] = []
    ordered = sorted(stats, key=lambda s: s.iteration)
    for k, cur in enumerate(ordered):
        prev = ordered[k - 1] if k > 0 else None
        checks = [position_bias(cur), judge_pairs_collapsed(prev, cur)]
        if prev is not None:
            checks = [score_inflation(prev, cur, agreement, agreement_name), *checks, length_growth(prev, cur),
                      judge_gaming(prev, cur)]
        out.extend(a for a in checks if a is not None)
    return out


# ---------------------------------------------------------------- from a run directory


def stats_from_diagnostics(d: Any) -> IterationStats:
    """``IterationStats`` of an ``evaluation.diagnostics.IterationDiagnostics``."""
    ap = d.actor_pairs
    return IterationStats(
        iteration=d.iteration,
        score_mean=_num(d.score_mean),
        response_length_mean=(sum(d.response_lengths) / len(d.response_lengths)) if d.response_lengths else None,
        actor_chosen_length_mean=_num(ap.chosen_length_mean) if ap and ap.count else None,
        actor_rejected_length_mean=_num(ap.rejected_length_mean) if ap and ap.count else None,
        decisive=d.meta.decisive if d.meta else None,
        first_position_wins=d.meta.first_position_wins if d.meta else None,
        judge_pairs=d.judge_pairs.count if d.meta is not None and d.judge_pairs is not None else None,
        judge_addressed=d.judge_addressed if d.n_responses else None,
        responses=d.n_responses or None,
    )


def _accuracy_source(ev: Mapping[str, Any] | None) -> tuple[str, str, Mapping[str, Any]] | None:
    """(suite, mode, results) of the first ``AGREEMENT_SOURCES`` entry with results in ``ev``."""
    suites = (ev or {}).get("suites")
    if not isinstance(suites, Mapping):
        return None
    for suite, mode in AGREEMENT_SOURCES:
        block = suites.get(suite)
        if isinstance(block, Mapping) and isinstance(block.get("results"), Mapping) and block["results"]:
            return suite, mode, block["results"]
    return None


def agreement_name_from_eval(ev: Mapping[str, Any] | None) -> str:
    """How the alarms name the figure ``agreement_from_eval`` returns."""
    src = _accuracy_source(ev)
    return f"judge accuracy on {src[0]} ({src[1]})" if src else "judge agreement"


def agreement_from_eval(ev: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Label -> the judge's agreement of a parsed ``eval.json``: its accuracy against gold labels
    (``AGREEMENT_SOURCES``) when the judge suites ran, else ``results[label].agreement.agreement``."""
    src = _accuracy_source(ev)
    if src is not None:
        return {label: _num((((r or {}).get(src[1]) or {}).get("overall") or {}).get("accuracy"))
                for label, r in src[2].items()}
    if not ev or not isinstance(ev.get("results"), Mapping):
        return {}
    out: dict[str, float | None] = {}
    for label, r in ev["results"].items():
        a = (r or {}).get("agreement") or {}
        out[label] = _num(a.get("agreement"))
    return out


def read_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/eval/eval.json`` (or ``RUN_DIR/eval.json``) parsed, or None when absent or unreadable."""
    for p in (RunLayout(run_dir).eval_dir / "eval.json", Path(run_dir) / "eval.json"):
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return None
            return data if isinstance(data, dict) else None
    return None


def summary_alarms(run_dir: str | Path, iteration: int) -> list[str]:
    """The alarms about iteration ``iteration`` of a run directory, as text lines, for the end-of-iteration
    summary: reads that iteration's and the previous one's records (``evaluation.diagnostics``) and the
    run's ``eval.json`` if any. Never raises on a missing previous iteration."""
    from metareward.evaluation.diagnostics import diagnose_iteration

    run = RunLayout(run_dir)
    stats = []
    for i in (iteration - 1, iteration):
        folder = run.iteration(i)
        if i >= 1 and folder.exists():
            stats.append(stats_from_diagnostics(diagnose_iteration(folder)))
    ev = read_eval(run_dir)
    alarms = check_drift(stats, agreement_from_eval(ev), agreement_name_from_eval(ev))
    return [a.message for a in alarms if a.iteration == iteration]
