"""Bradley-Terry scores over weighted battles, optionally with style covariates, and their bootstrap.

A battle is (player a, player b, outcome y for a: 1 win, 0.5 tie, 0 loss, weight w). The model is
``P(a beats b) = sigmoid(beta_a - beta_b + gamma . z)`` with ``z`` the battle's (standardised) style
covariates (none for plain BT). A tie enters as half a win for each side, which is the same likelihood
as arena-hard-auto's duplication of tie rows (one win for each side). The anchor player's beta is fixed
at 0 (the baseline), so ``100 * sigmoid(beta_model)`` is the model's predicted win rate against it --
with style covariates, at equal style.

The fit maximises the weighted log-likelihood minus ``l2/2 * |params|^2`` by Newton's method with a
backtracking line search; ``l2`` (default 1e-8) only keeps the optimum finite when one side wins every
battle (then the score tends to 0 or 100). It converges to the optimum (unlike upstream's 50 LBFGS steps,
which stop ~0.4 points short on the style-controlled fit); tests compare it with scikit-learn's
unpenalised logistic regression on the same design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, log_expit


@dataclass(frozen=True)
class Battles:
    a: list[str]
    b: list[str]
    y: np.ndarray  # outcome for a
    w: np.ndarray  # weight (3 for a strong verdict)
    z: np.ndarray  # (n, k) style covariates for a minus b, already normalised; k may be 0

    def __len__(self) -> int:
        return len(self.a)

    def take(self, idx: np.ndarray) -> Battles:
        return Battles([self.a[i] for i in idx], [self.b[i] for i in idx], self.y[idx], self.w[idx], self.z[idx])


def design(battles: Battles, players: Sequence[str], anchor: str) -> np.ndarray:
    """Columns: +1/-1 for each non-anchor player (a/b), then the style covariates."""
    free = [p for p in players if p != anchor]
    col = {p: i for i, p in enumerate(free)}
    x = np.zeros((len(battles), len(free) + battles.z.shape[1]))
    for i, (pa, pb) in enumerate(zip(battles.a, battles.b, strict=True)):
        if pa in col:
            x[i, col[pa]] += 1.0
        if pb in col:
            x[i, col[pb]] -= 1.0
    x[:, len(free):] = battles.z
    return x


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-8, tol: float = 1e-12,
                 max_iter: int = 100) -> np.ndarray:
    """Parameters maximising ``sum w [y log s(x.t) + (1-y) log s(-x.t)] - l2/2 |t|^2`` (Newton)."""
    theta = np.zeros(x.shape[1])

    def objective(t: np.ndarray) -> float:
        z = x @ t
        return float(-np.sum(w * (y * log_expit(z) + (1 - y) * log_expit(-z))) + 0.5 * l2 * t @ t)

    obj = objective(theta)
    for _ in range(max_iter):
        s = expit(x @ theta)
        g = x.T @ (w * (s - y)) + l2 * theta
        h = (x.T * (w * s * (1 - s))) @ x + l2 * np.eye(x.shape[1])
        step = -np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-12:
            cand = theta + t * step
            cand_obj = objective(cand)
            if cand_obj <= obj + 1e-15:
                break
            t *= 0.5
        theta, obj = cand, cand_obj
        if np.max(np.abs(t * step)) < tol:
            break
    return theta


def fit_scores(battles: Battles, players: Sequence[str], anchor: str, l2: float = 1e-8) -> dict[str, float]:
    """``100 * sigmoid(beta_p)`` for each player (the anchor gets 50): win rate against the anchor."""
    theta = fit_logistic(design(battles, players, anchor), battles.y, battles.w, l2=l2)
    free = [p for p in players if p != anchor]
    out = {p: float(100.0 * expit(theta[i])) for i, p in enumerate(free)}
    out[anchor] = 50.0
    return out


def bootstrap_scores(battles: Battles, players: Sequence[str], anchor: str, rounds: int = 100, seed: int = 0,
                     l2: float = 1e-8) -> np.ndarray:
    """Refit on ``rounds`` resamples, each drawing with replacement within every non-anchor player's own
    battles (so each model keeps its battle count); shape (rounds, len(players))."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, (pa, pb) in enumerate(zip(battles.a, battles.b, strict=True)):
        groups.setdefault(pb if pa == anchor else pa, []).append(i)
    out = np.empty((rounds, len(players)))
    for r in range(rounds):
        idx = np.concatenate([rng.choice(np.asarray(g), size=len(g), replace=True) for g in groups.values()])
        s = fit_scores(battles.take(idx), players, anchor, l2=l2)
        out[r] = [s[p] for p in players]
    return out
