"""Length-controlled choice of the actor's chosen/rejected response for one prompt (docs/method.md §2.4).

With S_max / S_min the highest / lowest mean judge score among a prompt's scored responses and
ρ ∈ [0, 1] the quality-tier parameter:

* top tier    = responses with score in [(1−ρ)·S_max + ρ·S_min, S_max]; chosen   = the SHORTEST;
* bottom tier = responses with score in [S_min, (1−ρ)·S_min + ρ·S_max]; rejected = the LONGEST.

ρ = 0 is plain argmax/argmin-score selection. Length is in characters (the unit AlpacaEval reports).
Edge cases (docs/method.md §2.4, all engineering defaults because the paper is silent):

* fewer than two scored responses, or S_max == S_min -> skip the prompt (Self-Rewarding discards
  equal-score pairs; with ρ > 0 the tiers would otherwise teach shorter-vs-longer on equal quality);
* length ties inside a tier: chosen prefers the higher score, rejected the lower score, then random;
* ρ = 0 with several responses tied at S_max (or S_min): random, our default -- at ρ = 0 the
  rule is argmax/argmin, so length does not enter (for ρ > 0 the tier rule applies as written);
* the same response in both tiers (possible only for ρ ≥ 0.5) -> skip; more generally a chosen
  response that does not score strictly higher than the rejected one (possible for ρ ≥ 0.5, where the
  tiers overlap) -> skip, since the pair would teach the inverse or no preference;
* optional absolute cap on the chosen response's length (docs/method.md §4.3: 2,500 chars in iteration 1).

Tier boundaries are compared with a 1e-9 tolerance: scores are means of judge scores, and e.g.
0.68·5.0 + 0.32·2.0 must not exclude a response scored exactly at the boundary because of rounding.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SKIP_ALL_SCORES_EQUAL",
    "SKIP_CHOSEN_NOT_BETTER",
    "SKIP_CHOSEN_TOO_LONG",
    "SKIP_FEWER_THAN_TWO",
    "SKIP_SAME_RESPONSE",
    "TOL",
    "ActorChoice",
    "ScoredResponse",
    "Skip",
    "select_actor_pair",
    "tier_bounds",
]

TOL = 1e-9
"""Tolerance for comparing mean scores (tier boundaries, equal scores)."""

SKIP_FEWER_THAN_TWO = "fewer_than_two_scored"
SKIP_ALL_SCORES_EQUAL = "all_scores_equal"
SKIP_SAME_RESPONSE = "same_response"
SKIP_CHOSEN_NOT_BETTER = "chosen_not_better"
SKIP_CHOSEN_TOO_LONG = "chosen_too_long"


@dataclass(frozen=True)
class ScoredResponse:
    """One response of a prompt with its mean valid judge score and its length in characters."""

    id: str
    score: float
    length: int


@dataclass(frozen=True)
class ActorChoice:
    """The selected actor preference pair."""

    chosen: ScoredResponse
    rejected: ScoredResponse


@dataclass(frozen=True)
class Skip:
    """No pair for this prompt; ``reason`` is one of the module's ``SKIP_*`` constants (or a judge-pair
    reason from ``selection.judge_pairs``), short and stable so it can be counted in stage reports."""

    reason: str


def _pick(candidates: list[int], rng: random.Random) -> int:
    """One of ``candidates`` (indices in input order); the rng is consumed only when there is a tie."""
    return candidates[0] if len(candidates) == 1 else rng.choice(candidates)


def tier_bounds(s_max: float, s_min: float, rho: float) -> tuple[float, float]:
    """(lowest score of the top tier, highest score of the bottom tier) for the scores' S_max, S_min and ρ
    (compare with ``TOL`` as ``select_actor_pair`` does; the run report shows them per prompt)."""
    return (1.0 - rho) * s_max + rho * s_min, (1.0 - rho) * s_min + rho * s_max


def select_actor_pair(
    responses: Sequence[ScoredResponse],
    rho: float,
    rng: random.Random,
    max_chosen_length: int | None = None,
) -> ActorChoice | Skip:
    """Choose the (chosen, rejected) responses of one prompt with the §2.4 quality-tier rule.

    ``responses`` are the prompt's responses that have at least one valid judgment, each with its
    mean score (responses without valid judgments are dropped by the caller, docs/method.md §2.2). ``rng``
    breaks exact ties (it is called only when a tie remains, so results are reproducible for a seeded
    rng). ``max_chosen_length`` (inclusive, characters) drops the pair when the chosen response is
    longer. Returns ``Skip`` with the reason when no pair is made. Raises ValueError for ρ outside
    [0, 1] or a non-finite score.
    """
    if not (0.0 <= rho <= 1.0):  # also rejects NaN
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if any(not math.isfinite(r.score) for r in responses):
        raise ValueError("scores must be finite")
    if len(responses) < 2:
        return Skip(SKIP_FEWER_THAN_TWO)
    s_max = max(r.score for r in responses)
    s_min = min(r.score for r in responses)
    if s_max - s_min <= TOL:
        return Skip(SKIP_ALL_SCORES_EQUAL)

    top_low, bottom_high = tier_bounds(s_max, s_min, rho)
    top = [i for i, r in enumerate(responses) if r.score >= top_low - TOL]
    bottom = [i for i, r in enumerate(responses) if r.score <= bottom_high + TOL]

    if rho == 0.0:
        # plain argmax / argmin; ties at S_max / S_min are broken at random (docs/method.md §2.4 default)
        chosen_i = _pick(top, rng)
        rejected_i = _pick(bottom, rng)
    else:
        # shortest in the top tier, then higher score; longest in the bottom tier, then lower score
        best = min((responses[i].length, -responses[i].score) for i in top)
        chosen_i = _pick([i for i in top if (responses[i].length, -responses[i].score) == best], rng)
        worst = max((responses[i].length, -responses[i].score) for i in bottom)
        rejected_i = _pick([i for i in bottom if (responses[i].length, -responses[i].score) == worst], rng)

    chosen, rejected = responses[chosen_i], responses[rejected_i]
    if chosen_i == rejected_i:
        return Skip(SKIP_SAME_RESPONSE)
    if chosen.score - rejected.score <= TOL:
        return Skip(SKIP_CHOSEN_NOT_BETTER)
    if max_chosen_length is not None and chosen.length > max_chosen_length:
        return Skip(SKIP_CHOSEN_TOO_LONG)
    return ActorChoice(chosen=chosen, rejected=rejected)
