"""Small statistics shared by the evaluations: agreement with a human ranking, Spearman, bootstrap.

Pure functions over numbers (no model, no files), so every metric can be checked by hand.

Conventions (docs/method.md §5.4-5.5):

* A human ranking gives each response a *rank*: 0 (or 1) is the best, larger is worse; equal ranks are
  human ties. A judge gives each response a *score* (higher is better) or None (no valid judgment).
* **Agreement** is over the pairs of responses of one prompt that the human ranked differently: the
  judge agrees when it scores the human-preferred response strictly higher. A judge tie (equal scores)
  or a missing score is a disagreement for *agreement* and is left out of *agreement without ties*
  (docs/method.md §5.4: "after removing pairs where the tested judge gives the two responses equal scores";
  a response the judge could not score is treated the same way: the judge expressed no preference).
* **Spearman** correlation between judge score and human preference (minus the rank) per prompt, over
  the responses with a score, then averaged over the prompts where it is defined (at least two scored
  responses, neither side constant). scipy's ``spearmanr`` gives ties their average rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class PairCounts:
    """Counts over the human-ordered response pairs of one or more prompts."""

    pairs: int = 0  # pairs the human ranked differently
    agree: int = 0  # judge scored the human-preferred response strictly higher
    judge_ties: int = 0  # judge gave both the same score
    unscored: int = 0  # at least one response had no valid score

    def __iadd__(self, other: PairCounts) -> PairCounts:
        self.pairs += other.pairs
        self.agree += other.agree
        self.judge_ties += other.judge_ties
        self.unscored += other.unscored
        return self

    @property
    def agreement(self) -> float:
        """Fraction of human-ordered pairs the judge orders the same way (NaN when there are none)."""
        return self.agree / self.pairs if self.pairs else math.nan

    @property
    def agreement_without_ties(self) -> float:
        """Agreement over the pairs where the judge expressed a strict preference."""
        decided = self.pairs - self.judge_ties - self.unscored
        return self.agree / decided if decided else math.nan


def pair_counts(scores: Sequence[float | None], ranks: Sequence[float]) -> PairCounts:
    """Agreement counts for one prompt's responses (``ranks``: lower is better; see module docstring)."""
    if len(scores) != len(ranks):
        raise ValueError(f"{len(scores)} scores for {len(ranks)} ranks")
    counts = PairCounts()
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j]:
                continue
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            counts.pairs += 1
            sb, sw = scores[better], scores[worse]
            if sb is None or sw is None:
                counts.unscored += 1
            elif sb == sw:
                counts.judge_ties += 1
            elif sb > sw:
                counts.agree += 1
    return counts


def spearman(scores: Sequence[float | None], ranks: Sequence[float]) -> float:
    """Spearman correlation of judge scores with human preference for one prompt (NaN if undefined).

    Responses without a score are left out. Positive means the judge agrees with the human order.
    """
    pairs = [(s, -r) for s, r in zip(scores, ranks, strict=True) if s is not None]
    if len(pairs) < 2:
        return math.nan
    x, y = zip(*pairs)
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(x, y).statistic
    return float(rho)


def mean_defined(values: Sequence[float]) -> tuple[float, int]:
    """Mean of the non-NaN values and how many there were (NaN, 0 when none)."""
    good = [v for v in values if not math.isnan(v)]
    return (float(np.mean(good)) if good else math.nan), len(good)


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the items with replacement).

    Uses ``scipy.stats.bootstrap(method="percentile")`` with ``numpy.random.default_rng(seed)``, so the
    interval is reproducible for a given seed. One value, or all values equal, gives a degenerate
    interval (the value itself); no values gives (NaN, NaN).
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    res = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
