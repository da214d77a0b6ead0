"""The suites' protocol arithmetic against the reference packages' own code, or an independent
re-implementation of their formulas, on fixed data, with exact expected values.

* AlpacaEval 2: alpaca_eval's own ``RandomSwitchTwoColumnsProcessor``, ``make_prompts``,
  ``prompt_to_chatml``, ``logprob_parser`` and ``AbsoluteScoringRule`` (the package is loaded without its
  CLI-importing ``__init__``, as in ``test_eval_lc_winrate.py``; nothing in site-packages is modified).
* Arena-Hard: arena-hard-auto's battle construction (strong verdict = 3 battles), ``compute_mle_elo`` and
  ``construct_style_matrices`` re-implemented here from upstream's formulas with scikit-learn's
  unpenalised logistic regression; a hand computation for the verdict weights and the bootstrap.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from metareward.evaluation.lc_winrate import length_controlled_winrate
from metareward.evaluation.suites import alpacaeval as ae
from metareward.evaluation.suites import arena_hard as ah
from metareward.evaluation.suites import bradley_terry as bt
from metareward.evaluation.suites.data import AlpacaItem, alpaca_annotator


@pytest.fixture
def alpaca(monkeypatch):
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None:
        pytest.skip("alpaca-eval not installed")
    from packaging.version import parse as parse_version

    stub = types.ModuleType("pkg_resources")
    stub.parse_version = parse_version
    monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    bare = types.ModuleType("alpaca_eval")
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__spec__ = spec  # so that importlib.util.find_spec still locates the package files
    for name in list(sys.modules):
        if name == "alpaca_eval" or name.startswith("alpaca_eval."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "alpaca_eval", bare)
    mods = types.SimpleNamespace(
        utils=importlib.import_module("alpaca_eval.utils"),
        processors=importlib.import_module("alpaca_eval.processors"),
        parsers=importlib.import_module("alpaca_eval.completion_parsers"),
        helpers=importlib.import_module("alpaca_eval.metrics.helpers"),
    )
    yield mods
    for name in list(sys.modules):
        if name.startswith("alpaca_eval."):
            monkeypatch.delitem(sys.modules, name, raising=False)


def fixed_alpaca() -> tuple[list[AlpacaItem], dict[str, str], dict[str, float]]:
    rng = np.random.default_rng(3)
    items = [AlpacaItem(f"ae{i}", f"Instruction number {i}: explain {w}.", "base " * int(rng.integers(5, 60)), "x")
             for i, w in enumerate(["tides", "taxes", "jazz", "DNS", "mitosis", "chess", "rust", "tea", "snow", "glue"])]
    answers = {it.id: "model " * int(rng.integers(5, 60)) for it in items}
    p_first = {it.id: float(x) for it, x in zip(items, rng.uniform(0.02, 0.98, len(items)))}
    p_first["ae3"] = 0.5  # an exact tie
    return items, answers, p_first


def test_switch_matches_alpaca_eval_processor(alpaca):
    items, answers, _ = fixed_alpaca()
    df = pd.DataFrame({"instruction": [it.instruction for it in items], "output_1": [it.baseline_output for it in items],
                       "output_2": [answers[it.id] for it in items]})
    proc = alpaca.processors.RandomSwitchTwoColumnsProcessor(
        two_columns_to_switch=["output_1", "output_2"], random_seed_columns=["instruction"],
        _switch_column="is_switched_outputs", seed=0, annotation_column="preference",
        fn_replace_if_switch=lambda d: d.assign(preference=3 - d["preference"]) if "preference" in d else d,
    )
    shown = proc.preprocess(df)
    reqs = ae.judge_requests(items, answers, alpaca_annotator())
    assert [r[1] for r in reqs] == shown["is_switched_outputs"].tolist()
    assert [r[2] for r in reqs] == shown["output_1"].tolist()
    assert [r[3] for r in reqs] == shown["output_2"].tolist()
    assert sum(r[1] for r in reqs) == 7  # both orders occur on this data (pinned)


def test_prompt_matches_alpaca_eval_make_prompts_and_chatml(alpaca):
    ann = alpaca_annotator()
    assert (ann.numerator_token, ann.denominator_tokens, ann.official_judge) == ("m", ("m", "M"), "gpt-4-1106-preview")
    row = pd.DataFrame({"instruction": ["Say {output_2} twice"], "output_1": ["first {instruction}"],
                        "output_2": ["second"]})
    theirs, _ = alpaca.utils.make_prompts(row, ann.template)
    ours = ae.fill_template(ann.template, "Say {output_2} twice", "first {instruction}", "second")
    assert ours == theirs[0]
    assert list(ae.chatml_messages(ours)) == alpaca.utils.prompt_to_chatml(theirs[0])


def test_preference_and_winrate_match_alpaca_eval(alpaca):
    items, answers, p_first = fixed_alpaca()
    prefs = []
    for it in items:
        p = p_first[it.id]
        completion = {"logprobs": {"content": [{"top_logprobs": [
            {"token": "m", "logprob": math.log(p)}, {"token": "M", "logprob": math.log(1 - p)},
            {"token": "The", "logprob": -9.0}]}]}}
        shown = alpaca.parsers.logprob_parser(completion, numerator_token="m", denominator_tokens=["m", "M"],
                                              is_binarize=False)[0]
        assert ae.shown_preference(p) == pytest.approx(shown, abs=1e-12)
        switched = ae.is_switched(it.instruction)
        assert switched == alpaca.utils.random_seeded_choice(
            seed="is_switched_outputs" + it.instruction + "0", choices=[False, True])
        prefs.append(3 - shown if switched else shown)
    ours = ae.summarize(items, answers, p_first, n_resamples=20)
    theirs = alpaca.helpers.AbsoluteScoringRule().describe_head2head(prefs)
    assert ours["win_rate"] == pytest.approx(theirs["win_rate"], abs=1e-9)
    assert ours["standard_error"] == pytest.approx(theirs["standard_error"], abs=1e-9)
    assert (ours["n_wins"], ours["n_wins_base"], ours["n_draws"]) == (
        theirs["n_wins"], theirs["n_wins_base"], theirs["n_draws"])
    assert list(ours["per_item"].values()) == pytest.approx(prefs, abs=1e-12)
    # pinned values of this fixed data
    assert ours["win_rate"] == pytest.approx(WINRATE_PINNED, abs=1e-9)
    lc = length_controlled_winrate(np.array(prefs) - 1, [len(answers[it.id]) for it in items],
                                   [len(it.baseline_output) for it in items])
    assert ours["lc_win_rate_minimal"] == pytest.approx(lc.lc_win_rate, abs=1e-12)


WINRATE_PINNED = 59.67381452784697


def test_model_preference_by_hand():
    # shown order baseline first: P(m)=0.8 prefers the baseline -> 1.2; switched: the model was "m" -> 1.8
    assert ae.model_preference(0.8, switched=False) == pytest.approx(1.2)
    assert ae.model_preference(0.8, switched=True) == pytest.approx(1.8)


# ------------------------------------------------------------------------------------------ Arena-Hard

PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")


def test_verdict_parsing():
    assert ah.parse_verdict("first [[A>B]] then final [[b>>a]]", PATTERNS) == "B>>A"
    assert ah.parse_verdict("only single [A=B]", PATTERNS) == "A=B"
    assert ah.parse_verdict("[[C]] nothing", PATTERNS) is None
    assert ah.parse_verdict("no verdict", PATTERNS) is None


def test_verdict_weights_by_hand():
    # game 1 (baseline is A): A>>B = baseline much better -> 3 losses; game 2 (model is A): A>B -> 1 win
    assert ah.game_battles("A>>B", model_is_a=False) == [0.0, 0.0, 0.0]
    assert ah.game_battles("A>B", model_is_a=True) == [1.0]
    assert ah.game_battles("B>>A", model_is_a=False) == [1.0, 1.0, 1.0]
    assert ah.game_battles("A=B", model_is_a=True) == [0.5]
    assert ah.game_battles("B>A", model_is_a=True) == [0.0]


def _items(n):
    from metareward.evaluation.suites.data import ArenaItem

    return [ArenaItem(f"q{i}", "hard_prompt" if i % 3 else "creative_writing", "x", f"question {i}", "base",
                      f"# Base {i}\n- a\n- b\n" + "text " * (10 + 7 * i)) for i in range(n)]


def test_model_battles_and_score_by_hand():
    items = _items(3)
    answers = {it.id: "answer" for it in items}
    texts = {"q0|g1": "[[A>>B]]", "q0|g2": "[[A>B]]",  # 3 losses, 1 win
             "q1|g1": "[[B>A]]", "q1|g2": "[[A=B]]",  # 1 win, 1 tie
             "q2|g1": "[[A>B]]", "q2|g2": "no verdict"}  # dropped
    rows, dropped = ah.model_battles("m", items, answers, texts, PATTERNS)
    assert dropped == 1
    assert [r["score"] for r in rows] == [0.0, 0.0, 0.0, 1.0, 1.0, 0.5]
    summary = ah.summarize({"m": rows}, {"m": dropped}, 3, rounds=50, seed=0)["m"]
    assert summary["battles"] == 6 and summary["questions_judged"] == 2
    assert summary["verdicts"] == {"A=B": 1, "A>>B": 1, "A>B": 1, "B>A": 1}
    # BT with only model-vs-baseline battles = the mean battle score, 2.5 / 6
    assert summary["bt_score"] == pytest.approx(100 * 2.5 / 6, abs=1e-6)


def test_bootstrap_mean_by_hand():
    scores = [0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    rng = np.random.default_rng(7)
    x = np.asarray(scores)
    means = np.array([x[rng.integers(0, 7, 7)].mean() for _ in range(100)])
    mean, lo, hi = ah.bootstrap_mean(scores, rounds=100, seed=7)
    assert (mean, lo, hi) == pytest.approx((100 * means.mean(), 100 * np.quantile(means, 0.05),
                                            100 * np.quantile(means, 0.95)), abs=1e-12)


def test_markdown_counts_by_hand():
    text = "# Title\n## Sub\n1. one\n2. two\n- dash\n* star\n**bold** and __also__\n```\n# not a header\n- no\n```\n"
    assert ah.markdown_counts(text) == {"header": 2, "list": 4, "bold": 2}


def _upstream_battles(seed=0):
    """Battles as arena-hard-auto builds them: model_a = baseline, model_b = the model; winner; style."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, strength in (("m1", 0.3), ("m2", 0.6), ("m3", 0.45)):
        for _q in range(40):
            ans_m = ("## H\n" * int(rng.integers(0, 3))) + ("- item\n" * int(rng.integers(0, 5))) + "w " * int(rng.integers(20, 400))
            ans_b = ("**b** " * int(rng.integers(0, 3))) + ("1. x\n" * int(rng.integers(0, 4))) + "w " * int(rng.integers(20, 400))
            u = rng.random()
            winner = "model_b" if u < strength else ("tie" if u < strength + 0.15 else "model_a")
            rows.append({"model_a": "baseline", "model_b": m, "winner": winner, "ans_a": ans_b, "ans_b": ans_m})
    return rows


def _sklearn_bt(rows, style: bool):
    """arena-hard-auto's compute_mle_elo / construct_style_matrices, with an unpenalised fit."""
    from sklearn.linear_model import LogisticRegression

    models = pd.Series(range(4), index=["baseline", "m1", "m2", "m3"])
    df = pd.DataFrame(rows + rows)  # duplicate battles
    n, p = len(df), 4
    k = 4 if style else 0
    X = np.zeros((n, p + k))
    X[np.arange(n), models[df["model_a"]].to_numpy()] = math.log(10)
    X[np.arange(n), models[df["model_b"]].to_numpy()] = -math.log(10)
    if style:
        va = np.array([ah.style_vector(t) for t in df["ans_a"]]).T
        vb = np.array([ah.style_vector(t) for t in df["ans_b"]]).T
        diff = (va - vb) / (va + vb + 1)
        X[:, -k:] = ((diff - diff.mean(axis=1)[:, None]) / diff.std(axis=1)[:, None]).T
    Y = np.zeros(n)
    Y[(df["winner"] == "model_a").to_numpy()] = 1.0
    tie = (df["winner"] == "tie").to_numpy().copy()
    tie[n // 2:] = False
    Y[tie] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=100000).fit(X, Y)
    coef = lr.coef_[0][:p]
    # win rate of each model against the baseline, as get_win_rate_column computes it
    return {m: 100 / (1 + 10 ** (coef[0] - coef[models[m]])) for m in ("m1", "m2", "m3")}


@pytest.mark.parametrize("style", [False, True])
def test_bradley_terry_matches_upstream_formulas(style):
    rows = _upstream_battles()
    ours_rows = [{"model": r["model_b"], "score": {"model_b": 1.0, "tie": 0.5, "model_a": 0.0}[r["winner"]],
                  "model_answer": r["ans_b"], "baseline_answer": r["ans_a"]} for r in rows]
    battles = ah.to_battles(ours_rows, style=style)
    ours = bt.fit_scores(battles, ["m1", "m2", "m3", ah.BASELINE], ah.BASELINE, l2=0.0)
    theirs = _sklearn_bt(rows, style)
    for m in ("m1", "m2", "m3"):
        assert ours[m] == pytest.approx(theirs[m], abs=1e-4)
    if not style:  # plain BT against one baseline: each model's score is its mean battle score
        for m in ("m1", "m2", "m3"):
            mine = [r["score"] for r in ours_rows if r["model"] == m]
            assert ours[m] == pytest.approx(100 * np.mean(mine), abs=1e-8)


def test_bootstrap_scores_resample_within_each_model():
    rows = _upstream_battles()
    ours_rows = [{"model": r["model_b"], "score": {"model_b": 1.0, "tie": 0.5, "model_a": 0.0}[r["winner"]],
                  "model_answer": r["ans_b"], "baseline_answer": r["ans_a"]} for r in rows]
    battles = ah.to_battles(ours_rows, style=False)
    players = ["m1", "m2", "m3", ah.BASELINE]
    boots = bt.bootstrap_scores(battles, players, ah.BASELINE, rounds=5, seed=1)
    # by hand: the same draws, one model at a time, and the mean of each resample
    rng = np.random.default_rng(1)
    groups = {m: [i for i, r in enumerate(ours_rows) if r["model"] == m] for m in ("m1", "m2", "m3")}
    y = np.array([r["score"] for r in ours_rows])
    for r in range(5):
        for j, m in enumerate(("m1", "m2", "m3")):
            idx = rng.choice(np.asarray(groups[m]), size=len(groups[m]), replace=True)
            assert boots[r, j] == pytest.approx(100 * y[idx].mean(), abs=1e-5)
    assert np.all(boots[:, 3] == 50.0)
