"""Judge preference data: which response to meta-judge, which orderings, which judgment pair (docs/method.md §3).

* §3.1 -- per prompt, the response whose valid judgment scores have the highest variance (the judge
  is least certain about it) is meta-judged; the prompt is skipped when every variance is 0.
* §3.2 -- every pair of textually different judgments of that response is compared in both orders.
* §3.5-3.6 -- Bradley-Terry (Elo) scores from the battle matrix; the highest-ε judgment is chosen and
  the lowest-ε one rejected, with our default filters (docs/method.md §10): drop the pair when the chosen judgment
  is too long (meta-judge length bias, §3.6) or when both judgments give the same score (filter (b):
  such a pair carries no scoring signal and only teaches style).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from metareward.selection.elo import DEFAULT_L2_RELATIVE, bradley_terry, evidence_l2
from metareward.selection.length_control import SKIP_CHOSEN_TOO_LONG, TOL, Skip

__all__ = [
    "SKIP_CHOSEN_TOO_LONG",
    "SKIP_ELO_TIED",
    "SKIP_FEWER_THAN_TWO_JUDGMENTS",
    "SKIP_FEWER_THAN_TWO_VALID",
    "SKIP_IDENTICAL_JUDGMENTS",
    "SKIP_NO_DECISIVE_VERDICT",
    "SKIP_NO_META_JUDGMENTS",
    "SKIP_POSITION_ONLY",
    "SKIP_SAME_SCORE",
    "SKIP_ZERO_VARIANCE",
    "VARIANCE_TOL",
    "JudgeChoice",
    "Skip",
    "meta_judge_orderings",
    "no_meta_response_reason",
    "select_judge_pair",
    "select_meta_response",
]

SKIP_ELO_TIED = "elo_tied"
SKIP_SAME_SCORE = "same_score"
SKIP_FEWER_THAN_TWO_JUDGMENTS = "fewer_than_two_judgments"
# reasons a prompt yields no judge pair, counted by the pairs stage (docs/judging.md, "Skip reasons")
SKIP_FEWER_THAN_TWO_VALID = "fewer_than_two_valid_judgments"  # before the meta-judge
SKIP_ZERO_VARIANCE = "zero_variance"  # before the meta-judge: every response's valid scores agree
SKIP_IDENTICAL_JUDGMENTS = "identical_judgments"  # before the meta-judge: nothing to compare
SKIP_NO_META_JUDGMENTS = "no_meta_judgments"  # battles planned but none recorded
SKIP_NO_DECISIVE_VERDICT = "no_decisive_verdict"  # every verdict a tie or a parse error
SKIP_POSITION_ONLY = "position_only_verdicts"  # every decisive verdict named the same position

VARIANCE_TOL = 1e-12
"""Variances within this of each other are tied, and a variance ≤ this counts as 0: the variance of
identical non-representable values such as [0.1, 0.1, 0.1] comes out as ~1e-34, not 0."""


@dataclass(frozen=True)
class JudgeChoice:
    """The selected judge pair: indices into the response's valid judgments, and every judgment's ε."""

    chosen: int
    rejected: int
    elo: tuple[float, ...]


def select_meta_response(
    scores_by_response: Mapping[str, Sequence[float | None]], rng: random.Random
) -> str | None:
    """The id of the response to meta-judge for one prompt, or None to skip the prompt (docs/method.md §3.1).

    ``scores_by_response`` maps a response id to the scores of its N judgments; None or NaN entries
    (invalid judgments) are ignored. A response is eligible with ≥ 2 valid scores. Its uncertainty is
    the population variance of its valid scores (``numpy.var``, ddof=0; the choice of ddof does not
    change the argmax when all responses have the same number of valid scores, and ddof=0 is defined
    for any count ≥ 1). Returns the eligible response with the largest variance; ties (within
    ``VARIANCE_TOL``) are broken by ``rng`` among the tied ids in sorted order, so the result does not
    depend on the mapping's iteration order. None when no response is eligible or the largest variance
    is 0.
    """
    variances: dict[str, float] = {}
    for response_id, scores in scores_by_response.items():
        valid = [float(s) for s in scores if s is not None and not math.isnan(s)]
        if len(valid) >= 2:
            variances[response_id] = float(np.var(valid))
    if not variances:
        return None
    best = max(variances.values())
    if best <= VARIANCE_TOL:
        return None
    tied = sorted(r for r, v in variances.items() if v >= best - VARIANCE_TOL)
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def no_meta_response_reason(scores_by_response: Mapping[str, Sequence[float | None]]) -> str:
    """Why ``select_meta_response`` returned None for these scores: ``"fewer_than_two_valid_judgments"``
    when no response has two valid (non-None, non-NaN) scores, else ``"zero_variance"``."""
    for scores in scores_by_response.values():
        if sum(1 for s in scores if s is not None and not math.isnan(s)) >= 2:
            return SKIP_ZERO_VARIANCE
    return SKIP_FEWER_THAN_TWO_VALID


def meta_judge_orderings(texts: Sequence[str]) -> list[tuple[int, int]]:
    """The (first, second) orderings to send to the meta-judge (docs/method.md §3.2).

    For every unordered pair m < n of judgments whose texts differ byte-for-byte, both orderings
    (m, n) and (n, m), in the deterministic order [(0,1), (1,0), (0,2), (2,0), …, (1,2), (2,1), …].
    Byte-identical judgments are never compared with each other (the comparison carries no
    information), though each is still compared with every different judgment.
    """
    orderings: list[tuple[int, int]] = []
    for m in range(len(texts)):
        for n in range(m + 1, len(texts)):
            if texts[m] != texts[n]:
                orderings.append((m, n))
                orderings.append((n, m))
    return orderings


def _pick(candidates: list[int], rng: random.Random) -> int:
    return candidates[0] if len(candidates) == 1 else rng.choice(candidates)


def select_judge_pair(
    scores: Sequence[float],
    lengths: Sequence[int],
    B: np.ndarray,
    rng: random.Random,
    max_chosen_length: int | None,
    require_different_scores: bool = True,
    l2_relative: float = DEFAULT_L2_RELATIVE,
) -> JudgeChoice | Skip:
    """Choose the (chosen, rejected) judgments of the meta-judged response (docs/method.md §3.5-3.6).

    ``scores[m]``, ``lengths[m]`` (characters) and row/column m of the battle matrix ``B`` describe
    the m-th valid judgment (invalid judgments never get here, the paper's filter (a)).
    ε = ``bradley_terry(B, evidence_l2(B, l2_relative))`` (penalty scaled with ΣB); chosen = argmax ε, rejected = argmin ε, exact ties (within 1e-9)
    broken by ``rng`` (consumed only on a tie). Skips, checked in this order:

    * fewer than two judgments -> ``"fewer_than_two_judgments"``;
    * max ε − min ε ≤ 1e-9 (nothing separates the judgments) -> ``"elo_tied"``;
    * ``max_chosen_length`` set and the chosen judgment longer -> ``"chosen_too_long"`` (the pair is
      dropped, not replaced by the next-best judgment: our default, docs/method.md §3.6);
    * ``require_different_scores`` and |score_c − score_r| ≤ 1e-9 -> ``"same_score"``.
    """
    n = len(scores)
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} scores")
    B = np.asarray(B, dtype=float)
    if B.shape != (n, n):
        raise ValueError(f"battle matrix shape {B.shape} does not match {n} judgments")
    if n < 2:
        return Skip(SKIP_FEWER_THAN_TWO_JUDGMENTS)
    eps = bradley_terry(B, l2=evidence_l2(B, l2_relative))
    hi, lo = float(eps.max()), float(eps.min())
    if hi - lo <= TOL:
        return Skip(SKIP_ELO_TIED)
    chosen = _pick([m for m in range(n) if eps[m] >= hi - TOL], rng)
    rejected = _pick([m for m in range(n) if eps[m] <= lo + TOL], rng)
    if max_chosen_length is not None and lengths[chosen] > max_chosen_length:
        return Skip(SKIP_CHOSEN_TOO_LONG)
    if require_different_scores and abs(scores[chosen] - scores[rejected]) <= TOL:
        return Skip(SKIP_SAME_SCORE)
    return JudgeChoice(chosen=chosen, rejected=rejected, elo=tuple(float(e) for e in eps))
