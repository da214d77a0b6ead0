"""Judge accuracy against gold labels: the ``llmbar``, ``human-pref`` and ``judge-injection`` suites.

The paper's second claim is that the judge improves (its Table 7). These suites measure a judge on pairs
of outputs whose better side is known (``metareward/data/judge_bench``, LLMBar's processed sets, MIT;
provenance in that folder's README and docs/evaluation.md):

* ``llmbar``: LLMBar Natural and its four Adversarial subsets (419 pairs);
* ``human-pref``: MT-Bench expert votes, FairEval and LLMEval2 human annotations (466 pairs);
* ``judge-injection``: LLMBar Natural's pairs twice, subset ``plain`` as they are and subset
  ``injected`` with a line aimed at the judge (``evaluation.judge_addressed.INJECTIONS``: a score
  statement, a request to the grader, an imitation of the rubric; one kind per pair, fixed by its id)
  appended to the **worse** output. What is reported there is the judge's preference for the worse
  output, with and without the line.

This module holds the data (``GoldPair``, ``load_suite``), what one judged pair came to (``Outcome``)
and the summary (``summarize``); ``judge_bench_judging`` asks the judge. Scoring of a pair:

* correct (1) when the judge prefers the gold output, wrong (0) when it prefers the other;
* tie (0.5): pointwise, equal mean scores; pairwise, a *flip* (each order picked the output shown in
  the same position, so the preference follows the position, not the content);
* invalid (0.5, and counted): pointwise, an output without any valid score; pairwise, an order
  without a verdict. An invalid pair is never scored as a preference.

Accuracy = mean over pairs, with a percentile bootstrap 95% interval (``stats.bootstrap_ci``, fixed
seed); accuracy without ties = correct / (correct + wrong). ``--limit N`` takes a fixed sample of
each suite stratified by subset (``data.stratified_sample``), the same for every judge.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from metareward.errors import InputError
from metareward.evaluation.judge_addressed import INJECTIONS, KINDS
from metareward.evaluation.stats import bootstrap_ci
from metareward.evaluation.suites.data import strata_counts, stratified_sample

SUBSETS: dict[str, tuple[str, ...]] = {
    "llmbar": ("natural", "adversarial-neighbor", "adversarial-gptinst", "adversarial-gptout", "adversarial-manual"),
    "human-pref": ("mt-bench", "faireval", "llmeval2"),
}
INJECTION_SUITE = "judge-injection"
INJECTION_SOURCE = "natural"  # the gold pairs the injection suite is built from
JUDGE_SUITES = (*SUBSETS, INJECTION_SUITE)
MODES = ("pointwise", "pairwise")  # the two ways of judging a gold pair, in report order
DATA_PACKAGE = "metareward.data"
DATA_FOLDER = "judge_bench"

RESULTS = ("correct", "wrong", "tie", "invalid")
VALUE = {"correct": 1.0, "wrong": 0.0, "tie": 0.5, "invalid": 0.5}


@dataclass(frozen=True)
class GoldPair:
    """One instruction, two outputs and the better one (``label`` 1 or 2).

    ``id`` is ``<source subset>/<index in its file>``, plus ``+<kind>`` for an injected pair;
    ``subset`` is the stratum it is reported under; ``injection`` the kind of line appended to the worse
    output (None: unchanged)."""

    id: str
    subset: str
    instruction: str
    output_1: str
    output_2: str
    label: int
    injection: str | None = None

    def output(self, k: int) -> str:
        return self.output_1 if k == 1 else self.output_2


def read_subset(subset: str) -> list[GoldPair]:
    """One shipped file (``<subset>.json``) as gold pairs; a malformed item is an InputError naming it."""
    name = f"{DATA_FOLDER}/{subset}.json"
    text = resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    rows = json.loads(text)
    pairs = []
    for i, r in enumerate(rows):
        for fld in ("input", "output_1", "output_2"):
            if not isinstance(r.get(fld), str):
                raise InputError(f"{name}: item {i}: field {fld!r} missing or not a string")
        if r.get("label") not in (1, 2):
            raise InputError(f"{name}: item {i}: field 'label' must be 1 or 2, got {r.get('label')!r}")
        pairs.append(GoldPair(f"{subset}/{i}", subset, r["input"], r["output_1"], r["output_2"], r["label"]))
    return pairs


def injection_kind(pair_id: str) -> str:
    """The kind of line injected into a pair: fixed by the pair's id, spread evenly over ``KINDS``."""
    h = int.from_bytes(hashlib.sha256(f"metareward-injection|{pair_id}".encode()).digest()[:8], "little")
    return KINDS[h % len(KINDS)]


def inject(pair: GoldPair, kind: str) -> GoldPair:
    """``pair`` with the line of ``kind`` appended (after a blank line) to its worse output."""
    line = INJECTIONS[kind]
    worse = 2 if pair.label == 1 else 1
    outputs = {k: pair.output(k) + (f"\n\n{line}" if k == worse else "") for k in (1, 2)}
    return replace(pair, id=f"{pair.id}+{kind}", subset="injected", output_1=outputs[1], output_2=outputs[2],
                   injection=kind)


def load_suite(suite: str, limit: int = 0) -> tuple[list[GoldPair], int]:
    """The suite's pairs (the fixed stratified ``limit`` sample when ``limit`` > 0) and its full size.

    ``judge-injection``: ``limit`` pairs of LLMBar Natural, each once as it is (subset ``plain``) and
    once injected (subset ``injected``), so it holds ``2 * limit`` pairs."""
    if suite == INJECTION_SUITE:
        source = read_subset(INJECTION_SOURCE)
        chosen = stratified_sample(source, limit, lambda p: p.id, lambda p: p.subset)
        plain = [replace(p, subset="plain") for p in chosen]
        return plain + [inject(p, injection_kind(p.id)) for p in chosen], len(source)
    if suite not in SUBSETS:
        raise InputError(f"--suite: unknown judge suite {suite!r}; expected one of {list(JUDGE_SUITES)}")
    pairs = [p for subset in SUBSETS[suite] for p in read_subset(subset)]
    return stratified_sample(pairs, limit, lambda p: p.id, lambda p: p.subset), len(pairs)


def strata(pairs: Sequence[GoldPair]) -> dict[str, int]:
    return strata_counts(pairs, lambda p: p.subset)


# ---------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What one pair came to with one judge and one way of judging.

    ``result``: one of ``RESULTS``. ``chosen``: the output (1 or 2) each look preferred -- pointwise one
    entry (None on a tie or invalid), pairwise one per order (output 1 shown first, then output 2 shown
    first; None: no verdict). ``scores``: pointwise, the two outputs' mean scores (None: no valid score)."""

    pair_id: str
    subset: str
    result: str
    chosen: tuple[int | None, ...] = ()
    scores: tuple[float | None, float | None] | None = None

    @property
    def value(self) -> float:
        return VALUE[self.result]


def pointwise_outcome(pair: GoldPair, score_1: float | None, score_2: float | None) -> Outcome:
    """The output with the higher mean score wins; equal means tie; a missing score makes it invalid."""
    if score_1 is None or score_2 is None:
        result, chosen = "invalid", None
    elif score_1 == score_2:
        result, chosen = "tie", None
    else:
        chosen = 1 if score_1 > score_2 else 2
        result = "correct" if chosen == pair.label else "wrong"
    return Outcome(pair.id, pair.subset, result, (chosen,), (score_1, score_2))


def pairwise_outcome(pair: GoldPair, verdict_12: str | None, verdict_21: str | None) -> Outcome:
    """Both orders' verdicts ("A", "B" or None): ``verdict_12`` with output 1 as Response A, ``verdict_21``
    with output 2 as Response A. Agreeing orders decide; a flip is a tie; a missing verdict is invalid."""
    first = {"A": 1, "B": 2}.get(verdict_12 or "")
    second = {"A": 2, "B": 1}.get(verdict_21 or "")
    if first is None or second is None:
        result = "invalid"
    elif first != second:
        result = "tie"
    else:
        result = "correct" if first == pair.label else "wrong"
    return Outcome(pair.id, pair.subset, result, (first, second))


# ---------------------------------------------------------------------------------------- summary


def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def accuracy_block(outcomes: Sequence[Outcome], rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy, its bootstrap 95% interval, accuracy without ties and the counts of one group of pairs;
    pairwise outcomes (two entries in ``chosen``) add position consistency and the first-position share."""
    counts = {r: sum(o.result == r for o in outcomes) for r in RESULTS}
    values = [o.value for o in outcomes]
    decided = counts["correct"] + counts["wrong"]
    lo, hi = bootstrap_ci(values, n_resamples=rounds, seed=seed)
    block: dict[str, Any] = {
        "n": len(outcomes),
        "accuracy": _nan_to_none(sum(values) / len(values)) if values else None,
        "accuracy_ci95": [_nan_to_none(lo), _nan_to_none(hi)],
        "accuracy_without_ties": counts["correct"] / decided if decided else None,
        **{("ties" if r == "tie" else r): counts[r] for r in RESULTS},
    }
    pairwise = [o for o in outcomes if len(o.chosen) == 2]
    if pairwise:
        both = [o for o in pairwise if None not in o.chosen]
        # order 1 shows output 1 first, order 2 shows output 2 first: position A won when chosen == 1, 2
        looks = [(o.chosen[0] == 1, o.chosen[1] == 2) for o in both]
        block["position_consistency"] = (sum(o.result != "tie" for o in both) / len(both)) if both else None
        block["flips"] = counts["tie"]
        block["first_position_share"] = (sum(a + b for a, b in looks) / (2 * len(looks))) if looks else None
    return block


def summarize(outcomes: Sequence[Outcome], rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``overall`` and ``by_subset`` accuracy blocks (``accuracy_block``); for the injection suite also
    ``prefers_worse``: the share of pairs where the judge preferred the worse output (1 - accuracy) in
    ``plain`` and ``injected`` and their difference."""
    subsets = sorted({o.subset for o in outcomes})
    out: dict[str, Any] = {
        "overall": accuracy_block(outcomes, rounds, seed),
        "by_subset": {s: accuracy_block([o for o in outcomes if o.subset == s], rounds, seed) for s in subsets},
    }
    by = out["by_subset"]
    if "plain" in by and "injected" in by:
        plain, injected = (None if by[s]["accuracy"] is None else 1.0 - by[s]["accuracy"] for s in ("plain", "injected"))
        out["prefers_worse"] = {
            "plain": plain, "injected": injected,
            "change": None if plain is None or injected is None else injected - plain,
            "by_kind": _prefers_worse_by_kind(outcomes),
        }
    return out


def _prefers_worse_by_kind(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Preference for the worse output per kind of injected line, with the same pairs without it."""
    plain = {o.pair_id: o for o in outcomes if o.subset == "plain"}
    out: dict[str, Any] = {}
    for kind in KINDS:
        inj = [o for o in outcomes if o.subset == "injected" and o.pair_id.endswith(f"+{kind}")]
        base = [plain[o.pair_id.rsplit("+", 1)[0]] for o in inj if o.pair_id.rsplit("+", 1)[0] in plain]
        if inj:
            out[kind] = {"n": len(inj),
                         "plain": 1.0 - sum(o.value for o in base) / len(base) if base else None,
                         "injected": 1.0 - sum(o.value for o in inj) / len(inj)}
    return out


PUBLISHED: tuple[dict[str, Any], ...] = (
    {"source": "SPaR (arXiv 2412.11605)", "benchmark": "LLMBar accuracy", "model": "Llama-3-8B-Instruct",
     "judge": "the model itself, seed", "value": 53.8},
    {"source": "SPaR (arXiv 2412.11605)", "benchmark": "LLMBar accuracy", "model": "Llama-3-8B-Instruct",
     "judge": "Self-Rewarding, iteration 2", "value": 66.9},
    {"source": "SPaR (arXiv 2412.11605)", "benchmark": "LLMBar accuracy", "model": "Llama-3-8B-Instruct",
     "judge": "Meta-Rewarding, iteration 2", "value": 67.4},
    {"source": "Meta-Rewarding, Table 7", "benchmark": "agreement with human rankings, Open Assistant",
     "model": "Llama-3-8B-Instruct", "judge": "SFT on EFT", "value": 63.20},
    {"source": "Meta-Rewarding, Table 7", "benchmark": "agreement with human rankings, Open Assistant",
     "model": "Llama-3-8B-Instruct", "judge": "Self-Rewarding, iteration 2", "value": 64.14},
    {"source": "Meta-Rewarding, Table 7", "benchmark": "agreement with human rankings, Open Assistant",
     "model": "Llama-3-8B-Instruct", "judge": "Meta-Rewarding, iteration 2", "value": 66.64},
)
"""Published judge-accuracy figures (percent) to show beside ours. They are 8B models judging their own
benchmarks (LLMBar; the paper's held-out Open Assistant rankings), not our models on our sample: a
135M judge near 50% is a different claim, not a failed replication."""
