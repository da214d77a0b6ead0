"""Battle results, positional weights, battle matrix and Bradley-Terry (Elo) scores (docs/method.md §3.4-3.5).

For the judgments j^1..j^N of one response, the meta-judge compares every pair in both orders. With
j^m in the first position ("Judgment A") and j^n in the second:

* r^{mn} = +1 if the first-position judgment wins, −1 if the second wins, 0 on tie / parse error;
* ω1 = win_2nd / (win_1st + win_2nd) weighs a win in the FIRST position and
  ω2 = win_1st / (win_1st + win_2nd) a win in the SECOND, so the position that wins more often has its
  wins down-weighted (ω1 + ω2 = 1). The counts are global over all meta-judgments of the iteration
  (our default, docs/method.md §3.4; per-prompt counts are noisy and undefined when one position never wins);
* B[m][n] = ω1·1[r^{mn} = +1] + ω2·1[r^{nm} = −1]: the weighted number of times j^m beat j^n.
  Position-inconsistent verdict pairs still count, one weighted win for each side (docs/method.md §3.4);
* ε = argmax Σ_{m,n} B[m][n]·log σ(ε_m − ε_n): weighted Bradley-Terry, solved here by Newton's method
  with a small L2 penalty (docs/method.md §3.5) so a judgment that never wins (or never loses) keeps a
  finite score instead of running off to ∓∞. The penalty is scaled with the evidence, λ = c·ΣB
  (``evidence_l2``), which makes the ranking independent of the matrix's overall scale. Only
  argmax/argmin of ε are used downstream.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_L2_RELATIVE",
    "battle_matrix",
    "battle_result",
    "bradley_terry",
    "evidence_l2",
    "positional_weights",
]

DEFAULT_L2 = 1e-3
"""Default absolute L2 weight of the ``bradley_terry`` solver when called directly.

The pair selection never uses it: it scales the penalty with the evidence (``evidence_l2``), because
a battle matrix's total weight ΣB ranges from ~0.4 (a strong positional bias gives most wins a weight
near 0) to ~110 (11 judgments, every ordering decisive), so a fixed weight would be 100-fold stronger,
relative to the data, on one response than on another."""

DEFAULT_L2_RELATIVE = 1e-4
"""Default penalty per unit of evidence: λ = 1e-4·ΣB (``evidence_l2``; docs/judging.md, "Bradley-Terry
penalty").

Why scaling is right: with λ = c·ΣB the objective for αB is α times the objective for B, so the
maximiser -- and hence argmax/argmin ε, the only things used downstream -- does not depend on the
overall scale of the battle matrix, only on its proportions. The penalty then bounds the score of a
judgment that never wins: its ε settles where ΣB_lost·e^{ε} ≈ 2λ|ε|, i.e. about −8 to −10 for
c = 1e-4, finite and ranked last; for judgments that both win and lose it moves ε by O(c)."""


def evidence_l2(B: np.ndarray, relative: float = DEFAULT_L2_RELATIVE) -> float:
    """The L2 weight ``relative``·ΣB for battle matrix ``B`` (diagonal ignored). 0 for an empty
    matrix (no evidence: every ε is 0 anyway). Raises ValueError for a negative ``relative``."""
    if relative < 0 or not np.isfinite(relative):
        raise ValueError(f"relative L2 weight must be finite and >= 0, got {relative}")
    B = np.asarray(B, dtype=float)
    return float(relative * (B.sum() - np.trace(B))) if B.size else 0.0


def battle_result(verdict: str | None) -> int:
    """The paper's r for one ordering: +1 if the verdict is "A" (first position wins), −1 for "B",
    0 for anything else (tie or parse error, docs/method.md §3.4). The verdict must be exactly "A" or "B", as
    ``metareward.parsing.parse_verdict`` returns it."""
    if verdict == "A":
        return 1
    if verdict == "B":
        return -1
    return 0


def positional_weights(results: Iterable[int]) -> tuple[float, float]:
    """(ω1, ω2) from ALL battle results of the iteration (docs/method.md §3.4).

    win_1st = number of +1 results, win_2nd = number of −1 results (0s are ignored);
    ω1 = win_2nd / (win_1st + win_2nd), ω2 = win_1st / (win_1st + win_2nd). With no wins at all the
    weights are (0.5, 0.5) (no evidence of a positional bias). Raises ValueError for a result outside
    {−1, 0, +1}.
    """
    win_1st = win_2nd = 0
    for r in results:
        if r == 1:
            win_1st += 1
        elif r == -1:
            win_2nd += 1
        elif r != 0:
            raise ValueError(f"battle result must be -1, 0 or +1, got {r!r}")
    total = win_1st + win_2nd
    if total == 0:
        return 0.5, 0.5
    return win_2nd / total, win_1st / total


def battle_matrix(n: int, battles: Iterable[tuple[int, int, int]], w1: float, w2: float) -> np.ndarray:
    """The n×n weighted win matrix B of one response's judgments (docs/method.md §3.4).

    Each battle is ``(first, second, r)`` for one ordering: ``first`` was Judgment A, ``second`` was
    Judgment B, ``r`` its result. r = +1 adds ω1 to B[first][second] (the first-position judgment won);
    r = −1 adds ω2 to B[second][first] (the second-position judgment won); r = 0 adds nothing. When both
    orderings of a pair are present this is exactly B[m][n] = ω1·1[r^{mn}=+1] + ω2·1[r^{nm}=−1]; a
    repeated ordering simply adds its win again. Raises ValueError for an index out of range, a
    judgment battling itself, or a result outside {−1, 0, +1}.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if w1 < 0 or w2 < 0:
        raise ValueError(f"weights must be non-negative, got ({w1}, {w2})")
    B = np.zeros((n, n), dtype=float)
    for first, second, r in battles:
        if not (0 <= first < n and 0 <= second < n):
            raise ValueError(f"battle ({first}, {second}) out of range for n={n}")
        if first == second:
            raise ValueError(f"judgment {first} cannot battle itself")
        if r == 1:
            B[first, second] += w1
        elif r == -1:
            B[second, first] += w2
        elif r != 0:
            raise ValueError(f"battle result must be -1, 0 or +1, got {r!r}")
    return B


def _objective(B: np.ndarray, eps: np.ndarray, l2: float) -> float:
    d = eps[:, None] - eps[None, :]
    log_sigmoid = -np.logaddexp(0.0, -d)
    return float(np.sum(B * log_sigmoid) - l2 * np.dot(eps, eps))


def bradley_terry(
    B: np.ndarray, l2: float = DEFAULT_L2, tol: float = 1e-10, max_iter: int = 100
) -> np.ndarray:
    """Bradley-Terry scores ε maximising Σ B[m][n]·log σ(ε_m − ε_n) − l2·Σε², centred to Σε = 0.

    ``B[m][n]`` is the (weighted) number of wins of m over n; the diagonal is ignored. The objective
    is concave (strictly for l2 > 0, so the maximiser is unique and automatically centred), and n is
    small (≤ ~16), so damped Newton's method is used: each step solves with the exact Hessian
    −(L + 2·l2·I), L the Laplacian of the weights (B + Bᵀ)·σ(1−σ), and is halved until the objective
    does not decrease. It stops when the largest step component is below ``tol``.

    l2 = 0 gives the plain MLE, which exists only when every judgment both wins and loses within a
    connected comparison graph; otherwise the iterations run to ``max_iter`` with scores growing
    without bound, so keep l2 > 0 for real data (see ``DEFAULT_L2``). Raises ValueError for a
    non-square, negative or non-finite B, or negative l2. The pair selection passes
    ``l2 = evidence_l2(B)``.
    """
    B = np.asarray(B, dtype=float)
    if B.ndim != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(f"B must be square, got shape {B.shape}")
    if not np.all(np.isfinite(B)) or np.any(B < 0):
        raise ValueError("B must be finite and non-negative")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    n = B.shape[0]
    if n <= 1:
        return np.zeros(n)
    B = B.copy()
    np.fill_diagonal(B, 0.0)
    N = B + B.T
    ones = np.ones((n, n)) / n  # fixes the free additive constant (relevant only for l2 = 0)
    eps = np.zeros(n)
    f = _objective(B, eps, l2)
    for _ in range(max_iter):
        d = eps[:, None] - eps[None, :]
        p = 0.5 * (1.0 + np.tanh(0.5 * d))  # σ(ε_m − ε_n), overflow-free
        # g_k = Σ_n B[k,n]·σ(ε_n−ε_k) − B[n,k]·σ(ε_k−ε_n) − 2·l2·ε_k
        grad = np.sum(B * p.T - B.T * p, axis=1) - 2.0 * l2 * eps
        W = N * p * p.T
        neg_hessian = np.diag(W.sum(axis=1)) - W + 2.0 * l2 * np.eye(n)
        step = np.linalg.lstsq(neg_hessian + ones, grad, rcond=None)[0]
        step -= step.mean()
        t = 1.0
        while True:
            candidate = eps + t * step
            f_candidate = _objective(B, candidate, l2)
            if f_candidate >= f - 1e-12 * max(1.0, abs(f)) or t < 1e-8:
                break
            t *= 0.5
        eps, f = candidate, f_candidate
        if np.max(np.abs(t * step)) < tol:
            break
    return eps - eps.mean()
