"""The constrained modes' next-token distributions: whether one is usable, and the score it gives.

The ``judge_score`` and ``meta_verdict`` passes read the probabilities of a closed set of choices (the
digits after ``Score: ``, the letters after ``Winner: Judgment ``); ``check_probabilities`` says whether
such a distribution may be used at all, ``expected_score`` and ``most_likely_value`` turn it into a
number. Pure functions of numbers; ``metareward.parsing`` re-exports them beside the text grammar
(``docs/judging.md``, "Constrained mode").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["PROB_SUM_TOL", "check_probabilities", "expected_score", "most_likely_value"]

PROB_SUM_TOL = 1e-3
"""How far from 1 the sum of a choice distribution may be. Engines return the probabilities
renormalised over the choices (``engines.base.ChoiceOutput``), so the sum is 1 up to float32 rounding
(~1e-7); a larger deviation means the engine's output is not what the interface promises."""


def check_probabilities(probs: Sequence[float], n_choices: int) -> str | None:
    """Why ``probs`` is not a usable distribution over ``n_choices`` choices, or None when it is.

    Usable: exactly ``n_choices`` numbers, each finite and in [0, 1], summing to 1 within
    ``PROB_SUM_TOL``. The constrained modes make a judgment (or meta-judgment) invalid, with a
    warning, when this returns a reason -- a NaN must never become a score or a verdict.
    """
    try:
        values = [float(p) for p in probs]
    except (TypeError, ValueError):
        return f"probabilities are not numbers: {list(probs)!r}"
    if len(values) != n_choices:
        return f"{len(values)} probabilities for {n_choices} choices"
    if any(not math.isfinite(p) for p in values):
        return f"non-finite probability in {values}"
    if any(p < 0 or p > 1 for p in values):
        return f"probability outside [0, 1] in {values}"
    total = math.fsum(values)
    if abs(total - 1.0) > PROB_SUM_TOL:
        return f"probabilities sum to {total:.6g}, not 1"
    return None


def _check_distribution(probs: Sequence[float], values: Sequence[float]) -> float:
    if len(probs) != len(values):
        raise ValueError(f"{len(probs)} probabilities for {len(values)} values")
    if not probs:
        raise ValueError("empty distribution")
    if any(not math.isfinite(p) or p < 0 for p in probs):
        raise ValueError(f"probabilities must be finite and non-negative: {list(probs)}")
    total = math.fsum(probs)
    if total <= 0:
        raise ValueError("probabilities sum to 0")
    return total


def expected_score(probs: Sequence[float], values: Sequence[float]) -> float:
    """Σ p_k·v_k / Σ p_k: the expected score under the (renormalised) distribution.

    ``probs[k]`` is the probability of the token for ``values[k]`` (e.g. the digits "0".."5" after
    "Score: "). Raises ValueError for a NaN, negative or all-zero distribution.
    """
    total = _check_distribution(probs, values)
    return math.fsum(p * v for p, v in zip(probs, values)) / total


def most_likely_value(probs: Sequence[float], values: Sequence[float]) -> float:
    """The value with the highest probability (the first one on exact ties)."""
    _check_distribution(probs, values)
    best = max(range(len(probs)), key=lambda k: (probs[k], -k))
    return values[best]
