"""A judge that puts no mass on any of the choices: the result is invalid, never a number and never a
crash of the whole stage. The OpenAI engine returns NaN probabilities (with a warning) when none of the
choices is among the server's top log-probabilities; every consumer treats that as invalid."""

from __future__ import annotations

import math

import pytest
from test_eval_suites_protocols import fixed_alpaca

from metareward.engines.base import ChoiceRequest
from metareward.engines.openai import OpenAIEngine
from metareward.evaluation.suites import alpacaeval as ae
from metareward.evaluation.winrate import _most_probable_verdict
from metareward.records import Judgment
from metareward.stages.judge import apply_score


def test_openai_engine_gives_nan_when_no_choice_is_among_the_top_tokens(monkeypatch):
    eng = OpenAIEngine("http://127.0.0.1:9/v1", "judge", check_model=False)
    monkeypatch.setattr(eng, "_top_logprobs", lambda r, sent: [("The", -0.1), ("I", -2.5)])
    req = ChoiceRequest("j1", ({"role": "user", "content": "rate it"},), "Score: ", ("0", "1", "2", "3", "4", "5"))
    with pytest.warns(RuntimeWarning, match="none of the choices"):
        out = eng._choice_one(req)
    assert out.id == "j1" and len(out.probs) == 6 and all(math.isnan(p) for p in out.probs)
    # the judge stage turns it into an invalid judgment, not a NaN score
    j = Judgment(id="p/r0/j0", response_id="p/r0", prompt_id="p", index=0, text="Fine.", score=None)
    with pytest.warns(RuntimeWarning, match="invalid"):
        scored = apply_score(j, out.probs)
    assert scored.score is None and scored.score_probs is None


def test_openai_engine_reads_the_choices_it_finds(monkeypatch):
    eng = OpenAIEngine("http://127.0.0.1:9/v1", "judge", check_model=False)
    monkeypatch.setattr(eng, "_top_logprobs", lambda r, sent: [("4", math.log(0.6)), ("3", math.log(0.2)), ("x", -1)])
    out = eng._choice_one(ChoiceRequest("j", ({"role": "user", "content": "q"},), "Score: ", ("3", "4")))
    assert out.probs == pytest.approx([0.25, 0.75])


def test_winrate_constrained_verdict_without_a_distribution_is_a_tie():
    assert _most_probable_verdict([0.2, 0.7, 0.1]) == "B"
    assert _most_probable_verdict([math.nan] * 3) is None
    assert _most_probable_verdict([0.5, 0.5]) is None  # wrong number of choices: not a distribution


def test_alpacaeval_leaves_out_annotations_without_a_distribution():
    items, answers, p_first = fixed_alpaca()
    full = ae.summarize(items, answers, p_first, n_resamples=20)
    broken = dict(p_first, **{items[0].id: math.nan})
    partial = ae.summarize(items, answers, broken, n_resamples=20)
    rest = ae.summarize(items[1:], answers, p_first, n_resamples=20)
    assert (full["n_invalid"], partial["n_invalid"]) == (0, 1)
    assert partial["n"] == full["n"] - 1 == rest["n"]
    assert partial["win_rate"] == rest["win_rate"] and math.isfinite(partial["win_rate"])
