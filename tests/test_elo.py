"""Battle results, positional weights, battle matrix and Bradley-Terry scores (docs/method.md §3.4-3.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from metareward.selection.elo import (
    DEFAULT_L2,
    DEFAULT_L2_RELATIVE,
    battle_matrix,
    battle_result,
    bradley_terry,
    evidence_l2,
    positional_weights,
)

# ---------------------------------------------------------------- battle results and weights


def test_battle_result() -> None:
    assert battle_result("A") == 1
    assert battle_result("B") == -1
    assert battle_result(None) == 0
    assert battle_result("tie") == 0


def test_positional_weights_exact() -> None:
    # win_1st = 3, win_2nd = 1 -> ω1 = 1/4, ω2 = 3/4 (the more frequent first-position wins weigh less)
    assert positional_weights([1, 1, 1, -1, 0, 0]) == (0.25, 0.75)
    # win_1st = 2, win_2nd = 3 -> ω1 = 3/5, ω2 = 2/5
    w1, w2 = positional_weights(iter([1, -1, -1, 1, -1]))
    assert (w1, w2) == (pytest.approx(0.6), pytest.approx(0.4))
    assert positional_weights([1, -1]) == (0.5, 0.5)
    assert positional_weights([1, 1]) == (0.0, 1.0)  # only first-position wins: they count for nothing


def test_positional_weights_no_wins() -> None:
    assert positional_weights([]) == (0.5, 0.5)
    assert positional_weights([0, 0, 0]) == (0.5, 0.5)


def test_positional_weights_rejects_bad_result() -> None:
    with pytest.raises(ValueError):
        positional_weights([1, 2])


@given(st.lists(st.sampled_from([-1, 0, 1])))
def test_positional_weights_sum_to_one(results: list[int]) -> None:
    w1, w2 = positional_weights(results)
    assert w1 >= 0 and w2 >= 0 and w1 + w2 == pytest.approx(1.0)


# ---------------------------------------------------------------- battle matrix


def test_battle_matrix_three_judgments_both_orders() -> None:
    w1, w2 = 0.25, 0.75
    battles = [
        (0, 1, +1),  # 0 first, wins in first position  -> B[0][1] += ω1
        (1, 0, -1),  # 0 second, wins in second position -> B[0][1] += ω2
        (0, 2, +1),  # 0 wins in first position          -> B[0][2] += ω1
        (2, 0, +1),  # 2 wins in first position (position-inconsistent, still counts) -> B[2][0] += ω1
        (1, 2, -1),  # 2 wins in second position         -> B[2][1] += ω2
        (2, 1, 0),  # tie / parse error                  -> nothing
    ]
    B = battle_matrix(3, battles, w1, w2)
    expected = np.array(
        [
            [0.0, 1.0, 0.25],
            [0.0, 0.0, 0.0],
            [0.25, 0.75, 0.0],
        ]
    )
    np.testing.assert_array_equal(B, expected)


def test_battle_matrix_equals_spec_formula() -> None:
    # B[m][n] = ω1·1[r^{mn}=+1] + ω2·1[r^{nm}=−1], from random results of all orderings
    rng = np.random.default_rng(0)
    n, w1, w2 = 5, 0.3, 0.7
    r = {(m, k): int(rng.integers(-1, 2)) for m in range(n) for k in range(n) if m != k}
    B = battle_matrix(n, [(m, k, v) for (m, k), v in r.items()], w1, w2)
    for m in range(n):
        for k in range(n):
            if m == k:
                assert B[m, k] == 0.0
            else:
                assert B[m, k] == w1 * (r[m, k] == 1) + w2 * (r[k, m] == -1)


def test_battle_matrix_errors() -> None:
    with pytest.raises(ValueError):
        battle_matrix(2, [(0, 2, 1)], 0.5, 0.5)
    with pytest.raises(ValueError):
        battle_matrix(2, [(1, 1, 1)], 0.5, 0.5)
    with pytest.raises(ValueError):
        battle_matrix(2, [(0, 1, 3)], 0.5, 0.5)
    assert battle_matrix(0, [], 0.5, 0.5).shape == (0, 0)


# ---------------------------------------------------------------- Bradley-Terry


def bt_objective(eps: np.ndarray, B: np.ndarray, l2: float) -> float:
    d = eps[:, None] - eps[None, :]
    return float(np.sum(B * -np.logaddexp(0.0, -d)) - l2 * eps @ eps)


def lbfgs_reference(B: np.ndarray, l2: float) -> np.ndarray:
    """Independent solver: scipy L-BFGS-B on the negated objective with its analytic gradient."""

    def neg(eps: np.ndarray) -> tuple[float, np.ndarray]:
        d = eps[:, None] - eps[None, :]
        p = 1.0 / (1.0 + np.exp(-d))
        grad = (B * (1 - p)).sum(axis=1) - (B * (1 - p)).sum(axis=0) - 2 * l2 * eps
        return -bt_objective(eps, B, l2), -grad

    res = minimize(
        neg,
        np.zeros(len(B)),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000},
    )
    return res.x - res.x.mean()


def hunter_mm(B: np.ndarray, iters: int = 20000) -> np.ndarray:
    """Independent solver for l2 = 0: Hunter's (2004) MM iteration π_i ← W_i / Σ_j N_ij / (π_i + π_j)."""
    n = len(B)
    wins = B.sum(axis=1)
    N = B + B.T
    np.fill_diagonal(N, 0.0)
    pi = np.ones(n)
    for _ in range(iters):
        denom = (N / (pi[:, None] + pi[None, :])).sum(axis=1)
        new = wins / denom
        new /= np.exp(np.mean(np.log(new)))
        if np.max(np.abs(new - pi)) < 1e-14:
            pi = new
            break
        pi = new
    eps = np.log(pi)
    return eps - eps.mean()


def test_bt_two_players_closed_form() -> None:
    B = np.array([[0.0, 3.0], [1.0, 0.0]])
    eps = bradley_terry(B, l2=0.0)
    # ε1 − ε2 = log(B12 / B21) = log 3, centred
    np.testing.assert_allclose(eps, [math.log(3) / 2, -math.log(3) / 2], atol=1e-12)
    B = np.array([[0.0, 0.25 + 0.75], [0.25, 0.0]])
    eps = bradley_terry(B, l2=0.0)
    assert eps[0] - eps[1] == pytest.approx(math.log(4.0), abs=1e-12)


def test_bt_two_players_small_l2_close_to_closed_form() -> None:
    B = np.array([[0.0, 3.0], [1.0, 0.0]])
    eps = bradley_terry(B)  # default l2 = 1e-3
    assert eps[0] - eps[1] == pytest.approx(math.log(3), abs=1e-2)
    assert eps[0] - eps[1] < math.log(3)  # shrunk toward 0


def test_bt_three_players_exact_expected_wins() -> None:
    # B[m][n] = π_m / (π_m + π_n) with π = (1, 2, 4) makes the gradient vanish at ε = log π, so the
    # MLE is log π centred: (−log 2, 0, log 2)
    B = np.array(
        [
            [0.0, 1 / 3, 1 / 5],
            [2 / 3, 0.0, 1 / 3],
            [4 / 5, 2 / 3, 0.0],
        ]
    )
    eps = bradley_terry(B, l2=0.0)
    np.testing.assert_allclose(eps, [-math.log(2), 0.0, math.log(2)], atol=1e-12)


def test_bt_symmetric_matrix_gives_zeros() -> None:
    B = np.array([[0, 2, 1], [2, 0, 3], [1, 3, 0]], dtype=float)
    np.testing.assert_allclose(bradley_terry(B), 0.0, atol=1e-12)
    np.testing.assert_allclose(bradley_terry(np.zeros((4, 4))), 0.0, atol=0)


def test_bt_trivial_sizes() -> None:
    assert bradley_terry(np.zeros((0, 0))).shape == (0,)
    np.testing.assert_array_equal(bradley_terry(np.array([[5.0]])), [0.0])


def test_bt_never_winning_judgment_is_finite_and_last() -> None:
    # judgment 2 loses every battle, judgment 0 wins every battle
    B = np.array(
        [
            [0.0, 2.0, 2.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],
        ]
    )
    eps = bradley_terry(B)
    assert np.all(np.isfinite(eps))
    assert int(np.argmin(eps)) == 2 and int(np.argmax(eps)) == 0
    assert abs(eps.sum()) < 1e-9
    assert np.max(np.abs(eps)) < 20
    np.testing.assert_allclose(eps, lbfgs_reference(B, DEFAULT_L2), atol=1e-5)


def test_bt_input_errors() -> None:
    with pytest.raises(ValueError):
        bradley_terry(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        bradley_terry(np.array([[0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError):
        bradley_terry(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError):
        bradley_terry(np.zeros((2, 2)), l2=-1.0)


def test_bt_diagonal_ignored() -> None:
    B = np.array([[7.0, 3.0], [1.0, 9.0]])
    np.testing.assert_allclose(bradley_terry(B, l2=0.0), [math.log(3) / 2, -math.log(3) / 2], atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_bt_matches_lbfgs_on_random_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    # sparse-ish weighted wins like real battle matrices: each cell 0, ω1 or ω2 or their sum
    w1 = float(rng.uniform(0.2, 0.8))
    B = rng.choice([0.0, w1, 1 - w1, 1.0], size=(n, n))
    np.fill_diagonal(B, 0.0)
    for l2 in (DEFAULT_L2, 0.05):
        ours = bradley_terry(B, l2=l2)
        ref = lbfgs_reference(B, l2)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert bt_objective(ours, B, l2) >= bt_objective(ref, B, l2) - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_bt_matches_hunter_mm_without_regulariser(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 8))
    B = rng.uniform(0.1, 3.0, size=(n, n))  # every pair won both ways: the unpenalised MLE exists
    np.fill_diagonal(B, 0.0)
    np.testing.assert_allclose(bradley_terry(B, l2=0.0), hunter_mm(B), atol=1e-6)


def test_bt_large_scale_is_stable() -> None:
    # lopsided counts put the optimum far out; the damped Newton steps must still converge
    B = np.array([[0.0, 1000.0, 1000.0], [0.001, 0.0, 1000.0], [0.001, 0.001, 0.0]])
    eps = bradley_terry(B, l2=0.0)
    assert eps[0] > eps[1] > eps[2] and eps[0] - eps[2] > 10
    np.testing.assert_allclose(eps, lbfgs_reference(B, 0.0), atol=1e-4)


small_B = st.integers(min_value=2, max_value=7).flatmap(
    lambda n: arrays(np.float64, (n, n), elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0]))
)


@settings(max_examples=100, deadline=None)
@given(small_B, st.randoms(use_true_random=False))
def test_bt_permutation_equivariant(B: np.ndarray, rnd) -> None:
    n = len(B)
    perm = list(range(n))
    rnd.shuffle(perm)
    perm = np.array(perm)
    eps = bradley_terry(B)
    eps_perm = bradley_terry(B[np.ix_(perm, perm)])
    np.testing.assert_allclose(eps_perm, eps[perm], atol=1e-8)


@settings(max_examples=100, deadline=None)
@given(small_B)
def test_bt_centred_finite_and_stationary(B: np.ndarray) -> None:
    eps = bradley_terry(B)
    assert np.all(np.isfinite(eps))
    assert abs(eps.sum()) < 1e-9
    # gradient of the penalised objective vanishes at the returned point
    Bz = B.copy()
    np.fill_diagonal(Bz, 0.0)
    d = eps[:, None] - eps[None, :]
    p = 1.0 / (1.0 + np.exp(-d))
    grad = (Bz * (1 - p)).sum(axis=1) - (Bz * (1 - p)).sum(axis=0) - 2 * DEFAULT_L2 * eps
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(small_B)
def test_bt_more_wins_never_lowers_own_score(B: np.ndarray) -> None:
    # adding a win of 0 over 1 must not decrease ε0 − ε1 (monotonicity of the MLE)
    before = bradley_terry(B)
    B2 = B.copy()
    B2[0, 1] += 1.0
    after = bradley_terry(B2)
    assert after[0] - after[1] >= before[0] - before[1] - 1e-9


def test_evidence_l2() -> None:
    B = np.array([[7.0, 1.0, 0.5], [0.25, 0.0, 0.0], [2.0, 0.25, 9.0]])  # the diagonal is ignored
    assert evidence_l2(B) == pytest.approx(1e-4 * 4.0, abs=1e-15)
    assert evidence_l2(B, 0.01) == pytest.approx(0.04, abs=1e-15)
    assert evidence_l2(np.zeros((0, 0))) == 0.0
    with pytest.raises(ValueError):
        evidence_l2(B, -1.0)
    assert DEFAULT_L2_RELATIVE == 1e-4


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1e-3, 0.1, 7.0, 300.0]))
def test_evidence_scaled_bt_is_invariant_to_the_scale_of_b(scale: float) -> None:
    B = np.array([[0.0, 2.0, 0.5, 1.0], [0.5, 0.0, 1.0, 0.0], [0.0, 0.25, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    ref = bradley_terry(B, l2=evidence_l2(B))
    np.testing.assert_allclose(bradley_terry(B * scale, l2=evidence_l2(B * scale)), ref, atol=1e-7)
