"""The LC win rate against alpaca_eval's own GLM code, on a fixed data frame, with the network cut.

alpaca_eval's package ``__init__`` imports its whole CLI (openai, fire, dotenv ...) and its ``utils``
imports ``pkg_resources`` (gone from recent setuptools); its GLM fetches ``df_gamed.csv`` from the
hub. The fixture below loads only ``alpaca_eval.metrics.glm_winrate`` (a bare package object instead of
the CLI-importing ``__init__``, a ``pkg_resources`` stand-in used only for version strings) and hands its
``hf_hub_download`` a local CSV. Nothing in site-packages is modified.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pandas as pd
import pytest

from metareward.evaluation.lc_winrate import lc_bootstrap_ci, length_controlled_winrate


@pytest.fixture
def alpaca_glm(monkeypatch, tmp_path):
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None:
        pytest.skip("alpaca-eval not installed (pip install --no-deps alpaca-eval scikit-learn patsy)")
    pytest.importorskip("sklearn")
    pytest.importorskip("patsy")
    from packaging.version import parse as parse_version

    stub = types.ModuleType("pkg_resources")
    stub.parse_version = parse_version
    monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    bare = types.ModuleType("alpaca_eval")
    bare.__path__ = list(spec.submodule_search_locations)
    for name in list(sys.modules):
        if name == "alpaca_eval" or name.startswith("alpaca_eval."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "alpaca_eval", bare)
    glm = importlib.import_module("alpaca_eval.metrics.glm_winrate")

    def fake_download(**kwargs):  # df_gamed.csv: only its instruction_difficulty column is read here
        path = tmp_path / "df_gamed.csv"
        pd.DataFrame({"model": "x", "index": range(100), "instruction_difficulty": 0.0}).to_csv(path)
        return str(path)

    monkeypatch.setattr(glm, "hf_hub_download", fake_download)
    yield glm
    for name in list(sys.modules):
        if name.startswith("alpaca_eval."):
            monkeypatch.delitem(sys.modules, name, raising=False)


def fixed_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 prompts; the model wins more often when it is longer (a length-biased judge)."""
    rng = np.random.default_rng(7)
    len_model = rng.integers(200, 2000, 40).astype(float)
    len_base = rng.integers(200, 2000, 40).astype(float)
    p_win = 1 / (1 + np.exp(-((len_model - len_base) / 600 - 0.3)))
    pref = (rng.random(40) < p_win).astype(float)
    pref[[3, 11, 25]] = 0.5  # ties
    return pref, len_model, len_base


def alpaca_frame(pref, len_model, len_base) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": range(len(pref)),
            "output_1": ["x" * int(n) for n in len_base],  # baseline
            "output_2": ["y" * int(n) for n in len_model],  # the model
            "generator_1": "baseline",
            "generator_2": "model",
            "annotator": "judge",
            "preference": np.where(pref == 0.5, 1.5, pref + 1.0),  # alpaca: 1 baseline, 2 model, 1.5 tie
        }
    )


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("C", [100.0, 1.0])  # C=1: the L1 penalty matters and must match too
def test_lc_winrate_matches_alpaca_eval(alpaca_glm, C):
    pref, lm, lb = fixed_frame()
    theirs = alpaca_glm.get_length_controlled_winrate(
        alpaca_frame(pref, lm, lb),
        glm_info={**alpaca_glm.GLM_INFO["length_controlled_minimal"], "kwargs": {"n_splits": 0, "C": C}},
        save_weights_dir=None,
        is_warn_extreme_changes=False,
    )
    ours = length_controlled_winrate(pref, lm, lb, C=C)
    assert ours.win_rate == pytest.approx(theirs["win_rate"], abs=1e-9)
    # liblinear stops at tol=1e-4; our L-BFGS-B runs to ~1e-10, so they agree to about 1e-3 points
    assert ours.lc_win_rate == pytest.approx(theirs["length_controlled_winrate"], abs=2e-3)
    # the fixture is length-biased: the judge favours the longer output, and LC corrects for it
    assert ours.length_coef < 0


def test_lc_winrate_pinned_values():
    pref, lm, lb = fixed_frame()
    ours = length_controlled_winrate(pref, lm, lb)
    assert ours.n == 40
    assert ours.win_rate == pytest.approx(46.25)
    assert ours.lc_win_rate == pytest.approx(LC_PINNED, abs=1e-6)
    lo, hi = lc_bootstrap_ci(pref, lm, lb, n_resamples=50, seed=0)
    assert lo < ours.lc_win_rate < hi
    assert (lo, hi) == pytest.approx(LC_CI_PINNED, abs=1e-6)


def test_lc_equal_lengths_is_raw_winrate_up_to_penalty():
    # no length signal: the fitted length weight is 0 and sigma(w_1) is the (L1-shrunk) raw rate
    pref = np.array([1, 1, 1, 0, 0.5, 1, 0, 1], float)
    lens = np.full(8, 500.0)
    r = length_controlled_winrate(pref, lens, lens)
    assert r.length_coef == 0.0
    raw = pref.mean()
    # optimum of |w| + C n [raw softplus(-w) + (1-raw) softplus(w)]: sigma(w) = raw - 1/(C n)
    assert r.lc_win_rate == pytest.approx(100 * (raw - 1 / (100 * 8)), abs=1e-6)


def test_lc_drops_missing_preferences():
    pref = np.array([1, np.nan, 0, 1], float)
    r = length_controlled_winrate(pref, [100, 200, 300, 400], [150, 250, 100, 300])
    assert r.n == 3


LC_PINNED = 37.30590697320288  # alpaca_eval (liblinear) gives 37.3068
LC_CI_PINNED = (14.58194988949636, 61.53478457263587)
