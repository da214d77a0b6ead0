"""Length-controlled win rate, the GLM of AlpacaEval 2 (Dubois et al. 2024), without a model hub.

AlpacaEval 2's LC win rate (``alpaca_eval.metrics.glm_winrate``) fits a logistic regression of the
judge's preference for the model over the baseline on the (standardised, tanh-squashed) length
difference of the two outputs, then reports the preference it predicts when the length difference is
zero. Its default ``length_controlled_v1`` model adds an ``instruction_difficulty`` term per AlpacaEval
instruction and a regularisation towards two "gamed" baselines; both come from a file
(``df_gamed.csv``) that ``alpaca_eval`` downloads from the Hugging Face hub at run time, and both are
only defined for AlpacaEval's own 805 instructions. On our prompt sets neither exists, so this module
implements alpaca_eval's ``length_controlled_minimal`` GLM, which has neither term:

    preference ~ np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1

with, exactly as in alpaca_eval:

* ``std_delta_len = (len(baseline output) - len(model output)) / std`` (characters; pandas' sample
  standard deviation, ddof=1, over the compared prompts);
* ``preference`` in [0, 1]: 1 model wins, 0 baseline wins, 0.5 tie; fitted as a *continuous* target
  (each row enters twice, as label 1 with weight p and as label 0 with weight 1 - p);
* an L1-penalised logistic regression without intercept (``not_gamed_baseline`` is the constant
  column): minimise ``|w|_1 + C * sum_i [p_i softplus(-z_i) + (1 - p_i) softplus(z_i)]``,
  ``z_i = w . x_i`` -- liblinear's objective, here solved by proximal Newton (``fit_glm``);
* LC win rate = 100 * mean over prompts of sigma(w . x_i with the length term at 0) = 100 * sigma(w_1).

One deliberate difference: alpaca_eval chooses C by 5-fold cross-validation (``LogisticRegressionCV``);
we use a fixed ``C`` (default 100, alpaca_eval's own value when it skips cross-validation,
``n_splits=0``), because our prompt sets are often too small for a stable 5-fold choice. With C=100
the penalty is negligible for more than a handful of prompts. ``tests/test_eval_lc_winrate.py``
checks the result against alpaca_eval's own code (``n_splits=0``) on a fixed data frame.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import expit


@dataclass
class LCResult:
    """Length-controlled win rate (percent) and the fitted GLM weights."""

    lc_win_rate: float
    win_rate: float  # the raw win rate (ties count half), percent
    length_coef: float  # weight of tanh(std_delta_len); negative: the judge prefers the longer output
    baseline_coef: float  # weight of the constant column; sigma(baseline_coef) is the LC win rate
    n: int


def _features(len_model: np.ndarray, len_baseline: np.ndarray) -> np.ndarray:
    delta = len_baseline - len_model
    std = float(np.std(delta, ddof=1)) if delta.size > 1 else 0.0
    scaled = delta / std if std > 0 and math.isfinite(std) else np.zeros_like(delta)
    return np.column_stack([np.tanh(scaled), np.ones_like(delta)])


def _objective(x: np.ndarray, p: np.ndarray, w: np.ndarray, C: float) -> float:
    z = x @ w
    return float(np.sum(np.abs(w)) + C * np.sum(p * np.logaddexp(0.0, -z) + (1.0 - p) * np.logaddexp(0.0, z)))


def _l1_quadratic_step(w: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The step minimising ``g.step + step.H.step / 2 + |w + step|_1`` exactly, for a few weights.

    The minimiser ``v = w + step`` has some support S and signs s on it; then
    ``v_S = w_S - H_SS^-1 (g_S - H_S,notS w_notS + s)``. Every (S, s) whose solution has the signs s is
    a candidate (v = 0 always is); the convex objective's minimum is the best candidate. 3^d solves.
    """
    d = w.size

    def q(v: np.ndarray) -> float:
        step = v - w
        return float(g @ step + 0.5 * step @ h @ step + np.sum(np.abs(v)))

    best, best_q = np.zeros(d), q(np.zeros(d))
    for signs in itertools.product((-1.0, 0.0, 1.0), repeat=d):
        s = np.asarray(signs)
        S = s != 0
        if not S.any():
            continue
        rhs = g[S] - h[np.ix_(S, ~S)] @ w[~S] + s[S]
        try:
            v_S = w[S] - np.linalg.solve(h[np.ix_(S, S)], rhs)
        except np.linalg.LinAlgError:
            continue
        if not np.all(np.sign(v_S) == s[S]):
            continue
        v = np.zeros(d)
        v[S] = v_S
        qv = q(v)
        if qv < best_q:
            best, best_q = v, qv
    return best - w


def fit_glm(x: np.ndarray, p: np.ndarray, C: float = 100.0, tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:
    """Weights minimising ``|w|_1 + C * sum_i [p_i softplus(-x_i.w) + (1-p_i) softplus(x_i.w)]``.

    Proximal Newton (the method of newGLMNET, which liblinear's L1 logistic solver uses): each step
    minimises the quadratic model of the smooth part plus the exact L1 term (``_l1_quadratic_step``,
    exact for our two weights), then backtracks until the objective decreases.
    Converges quadratically; the problem is convex, so the result is the unique optimum up to ``tol``.
    """
    used = np.any(x != 0, axis=0)  # an all-zero column (no length spread) keeps weight 0
    if not used.all():
        w = np.zeros(x.shape[1])
        if used.any():
            w[used] = fit_glm(x[:, used], p, C=C, tol=tol, max_iter=max_iter)
        return w
    d = x.shape[1]
    w = np.zeros(d)
    obj = _objective(x, p, w, C)
    for _ in range(max_iter):
        z = x @ w
        s = expit(z)
        g = C * (x.T @ (s - p))
        h = C * (x.T * (s * (1.0 - s))) @ x + 1e-12 * np.eye(d)  # ridge only guards against 0/0
        step = _l1_quadratic_step(w, g, h)
        if np.max(np.abs(step)) < tol:
            break
        t = 1.0
        while t > 1e-10:
            cand = w + t * step
            cand_obj = _objective(x, p, cand, C)
            if cand_obj <= obj:
                break
            t *= 0.5
        else:
            break
        w, obj = cand, cand_obj
        if np.max(np.abs(t * step)) < tol:
            break
    return w


def length_controlled_winrate(
    preferences: Sequence[float],
    len_model: Sequence[float],
    len_baseline: Sequence[float],
    C: float = 100.0,
) -> LCResult:
    """LC win rate of the model over the baseline (see module docstring).

    ``preferences[i]`` is 1 (model wins), 0 (baseline wins) or 0.5 (tie) for prompt i; NaN entries
    (no verdict) are dropped, as alpaca_eval does. Lengths are in characters.
    """
    p = np.asarray(preferences, dtype=float)
    lm = np.asarray(len_model, dtype=float)
    lb = np.asarray(len_baseline, dtype=float)
    if not (p.shape == lm.shape == lb.shape):
        raise ValueError(f"shapes differ: {p.shape}, {lm.shape}, {lb.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("preferences must lie in [0, 1]")
    # alpaca_eval standardises the length difference over all rows, then drops rows without a preference
    x = _features(lm, lb)
    keep = ~np.isnan(p)
    if not keep.any():
        return LCResult(math.nan, math.nan, math.nan, math.nan, 0)
    w = fit_glm(x[keep], p[keep], C=C)
    return LCResult(
        lc_win_rate=float(100.0 * expit(w[1])),
        win_rate=float(100.0 * np.mean(p[keep])),
        length_coef=float(w[0]),
        baseline_coef=float(w[1]),
        n=int(keep.sum()),
    )


def lc_bootstrap_ci(
    preferences: Sequence[float],
    len_model: Sequence[float],
    len_baseline: Sequence[float],
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    C: float = 100.0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the LC win rate, resampling prompts (the GLM is refitted)."""
    p = np.asarray(preferences, dtype=float)
    keep = ~np.isnan(p)
    p, lm, lb = p[keep], np.asarray(len_model, float)[keep], np.asarray(len_baseline, float)[keep]
    if p.size < 2:
        return math.nan, math.nan

    def statistic(pp: np.ndarray, mm: np.ndarray, bb: np.ndarray) -> float:
        return length_controlled_winrate(pp, mm, bb, C=C).lc_win_rate

    res = stats.bootstrap(
        (p, lm, lb),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
