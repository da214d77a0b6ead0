"""Agreement, Spearman and bootstrap intervals on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metareward.evaluation.stats import PairCounts, bootstrap_ci, mean_defined, pair_counts, spearman


def test_agreement_hand_made_rankings():
    # prompt 1: human order r0 > r1 > r2 > r3; the judge ties r1 and r2
    c1 = pair_counts([5, 4, 4, 1], [0, 1, 2, 3])
    assert (c1.pairs, c1.agree, c1.judge_ties, c1.unscored) == (6, 5, 1, 0)
    # prompt 2: r1 and r2 tied by the human (pair skipped); judge reverses r0/r1; r2 unscored
    c2 = pair_counts([2, 3, None], [0, 1, 1])
    assert (c2.pairs, c2.agree, c2.judge_ties, c2.unscored) == (2, 0, 0, 1)
    total = PairCounts()
    total += c1
    total += c2
    assert total.agreement == 5 / 8
    assert total.agreement_without_ties == 5 / 6


def test_spearman_hand_made():
    # judge ranks (average ranks for the tie) [4, 2.5, 2.5, 1] vs human [4, 3, 2, 1]: rho = 3/sqrt(10)
    assert spearman([5, 4, 4, 1], [0, 1, 2, 3]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([2, 3, None], [0, 1, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([3, 3, 3], [0, 1, 2]))  # constant judge: undefined
    assert math.isnan(spearman([3, None], [0, 1]))  # one scored response
    avg, n = mean_defined([3 / math.sqrt(10), -1.0, math.nan])
    assert n == 2 and avg == pytest.approx((3 / math.sqrt(10) - 1) / 2)


def test_empty_counts_are_nan():
    assert math.isnan(PairCounts().agreement) and math.isnan(PairCounts().agreement_without_ties)


def test_bootstrap_fixed_seed():
    values = [1, 0, 1, 1, 0.5, 0, 1, 1]
    lo, hi = bootstrap_ci(values, n_resamples=1000, seed=0)
    assert (lo, hi) == (0.375, 0.9375)
    # the same as resampling by hand with numpy's generator and taking the percentiles
    v = np.asarray(values)
    means = v[np.random.default_rng(0).integers(0, v.size, (1000, v.size))].mean(axis=1)
    assert (lo, hi) == tuple(np.percentile(means, [2.5, 97.5]))
    assert bootstrap_ci(values, n_resamples=1000, seed=1) != (lo, hi)


def test_bootstrap_degenerate():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
