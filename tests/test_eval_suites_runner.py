"""``metareward eval --suite``: the stage logic with fake engines (answers, judging through the cache,
resume after a kill, eval.json layout, the report fragment), and one small end-to-end CLI run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fakes import Crash, FakeEngine, _h

from metareward.engines.base import Completion, GenerationOutput
from metareward.evaluation.runner import EvalOptions, Evaluator, format_suites, subset_agreement
from metareward.evaluation.suite_report import render_suites
from metareward.ranked import RankedPrompt, RankedResponse
from metareward.records import Judgment

VERDICTS = ["A>>B", "A>B", "A=B", "B>A", "B>>A", "none"]


class FakeJudge(FakeEngine):
    """Arena-Hard verdicts from the request id (one in six unparseable); label probabilities as FakeEngine."""

    def generate(self, requests):
        self.calls.append(len(requests))
        for r in requests:
            self._tick()
            yield GenerationOutput(r.id, (Completion(f"verdict [[{VERDICTS[_h(r.id) % 6]}]]", 4, True),))


class Factory:
    def __init__(self, judge_fail_after=None):
        self.built: list[str] = []
        self.judge_fail_after = judge_fail_after
        self.judges: list[FakeJudge] = []

    def __call__(self, path):
        self.built.append(path)
        if path == "the-judge":
            j = FakeJudge(fail_after=self.judge_fail_after)
            self.judges.append(j)
            return j
        return FakeEngine()


MODELS = [("seed", "m0"), ("iter_1", "m1")]


def opts(**kw):
    base = dict(parts=(), suites=("alpacaeval2", "arena-hard-v2", "ifeval"), limit=5, judge="the-judge",
                suite_bootstrap=10, max_tokens=16)
    return EvalOptions(**{**base, **kw})


def test_suites_eval_json_layout_and_labels(tmp_path):
    f = Factory()
    report = Evaluator(MODELS, opts(), tmp_path, engine_factory=f, log=lambda m: None).run()
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["suites"] == json.loads(json.dumps(saved["suites"]))
    s = saved["suites"]
    assert s["judge"]["model"] == "the-judge" and s["judge"]["cache"] == "annotations.jsonl"
    ae, ah, ie = s["alpacaeval2"], s["arena-hard-v2"], s["ifeval"]
    assert (ae["n"], ae["of"], ah["n"], ah["of"], ie["n"], ie["of"]) == (5, 805, 5, 750, 5, 541)
    assert ae["proxy"] is True and ae["judge_is_official"] is False and ae["official_judge"] == ["gpt-4-1106-preview"]
    assert ah["proxy"] is True and ah["verdict_weight"] == 3
    assert set(ae["results"]) == set(ah["results"]) == set(ie["results"]) == {"seed", "iter_1"}
    for r in ae["results"].values():
        assert r["n"] == 5 and 0 <= r["win_rate"] <= 100 and r["standard_error"] is not None
    for r in ah["results"].values():
        assert r["questions_judged"] + r["questions_dropped"] == 5
    # both models answered every suite; outputs are kept beside eval.json
    for label in ("seed", "iter_1"):
        for suite in ("alpacaeval2", "arena-hard-v2", "ifeval"):
            assert len((tmp_path / "outputs" / f"{label}.{suite}.jsonl").read_text().splitlines()) == 5
    text = format_suites(report)
    assert "proxy" in text and "n=5/805" in text and "n=5/541" in text
    html = render_suites(saved)
    assert "22.92" in html and "Llama-3-8B-Instruct" in html and "<b>proxy</b>" in html
    assert "Arena-Hard v2.0" in html and "IFEval" in html


def test_suites_resume_after_a_killed_judge_without_rejudging(tmp_path):
    # the fake models answer identically, so iter_1's judgments are cache hits of seed's: 5 + 10 to judge
    with pytest.raises(Crash):
        Evaluator(MODELS, opts(), tmp_path, engine_factory=Factory(judge_fail_after=8), log=lambda m: None).run()
    stored = (tmp_path / "annotations.jsonl").read_text().splitlines()
    assert len(stored) == 8  # every judgment yielded before the kill was kept
    f2 = Factory()
    first = Evaluator(MODELS, opts(), tmp_path, engine_factory=f2, log=lambda m: None).run()
    assert f2.judges[0].emitted == 15 - 8  # only what the kill lost
    f3 = Factory()
    again = Evaluator(MODELS, opts(), tmp_path, engine_factory=f3, log=lambda m: None).run()
    assert "the-judge" not in f3.built  # everything cached: no judge loaded at all
    assert again["suites"]["alpacaeval2"]["results"] == first["suites"]["alpacaeval2"]["results"]
    assert again["suites"]["arena-hard-v2"]["results"] == first["suites"]["arena-hard-v2"]["results"]


def test_a_new_model_reuses_cached_judgments(tmp_path):
    Evaluator(MODELS[:1], opts(), tmp_path, engine_factory=Factory(), log=lambda m: None).run()
    f = Factory()
    Evaluator(MODELS, opts(), tmp_path, engine_factory=f, log=lambda m: None).run()
    assert "the-judge" not in f.built  # iter_1's answers equal seed's here, so every judgment is a cache hit


def test_mtbench_suite_is_the_winrate_part(tmp_path):
    o = opts(suites=("mtbench",), parts=("winrate",), baseline="seed", limit=3)
    report = Evaluator(MODELS, o, tmp_path, engine_factory=Factory(), log=lambda m: None).run()
    mt = report["suites"]["mtbench"]
    assert mt["n"] == 3 and set(mt["results"]) == {"iter_1"}
    assert mt["results"]["iter_1"]["judge"] == "the-judge" and "per_prompt" not in mt["results"]["iter_1"]


def test_subset_agreement_from_preference_pairs():
    ranked = [RankedPrompt(f"p{i}", "q", (RankedResponse("good", 0, "chosen"), RankedResponse("bad", 1, "rejected")),
                           {"subset": sub, "meta": None}) for i, sub in enumerate(["chat", "chat", "safety"])]
    scores = {"p0": (5, 1), "p1": (2, 2), "p2": (1, 4)}  # chat: one right, one tie; safety: wrong
    judgments = [Judgment(id=f"{p}/r{k}/j0", response_id=f"{p}/r{k}", prompt_id=p, index=0, text="", score=s[k])
                 for p, s in scores.items() for k in (0, 1)]
    out = subset_agreement(ranked, judgments)
    assert out == {"chat": {"pairs": 2, "accuracy": 0.5, "accuracy_without_ties": 1.0, "judge_ties": 1},
                   "safety": {"pairs": 1, "accuracy": 0.0, "accuracy_without_ties": 0.0, "judge_ties": 0}}


@pytest.mark.slow
def test_cli_suites_end_to_end_on_the_embedded_model(tmp_path):
    # one item per suite: the judge reads whole baseline answers (thousands of tokens for Arena-Hard), and
    # the sample of several items is tested with the fake engines above
    cmd = [sys.executable, "-m", "metareward.cli", "eval", "--models", "seed=smollm2-135m",
           "--suite", "alpacaeval2,arena-hard-v2,ifeval", "--limit", "1", "--max-tokens", "4",
           "--verdict-max-tokens", "4", "--out", str(tmp_path), "--threads", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    s = json.loads((tmp_path / "eval.json").read_text())["suites"]
    assert s["alpacaeval2"]["results"]["seed"]["n"] == 1 and s["alpacaeval2"]["proxy"] is True
    assert s["arena-hard-v2"]["n"] == 1 and s["ifeval"]["results"]["seed"]["n"] == 1
    lines = (tmp_path / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 2  # 1 AlpacaEval label read, the 2 games (both orders) of 1 Arena-Hard question
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "loading the suite judge" not in again.stdout  # nothing re-judged
    assert (tmp_path / "annotations.jsonl").read_text().splitlines() == lines


def test_judge_spec_openai_official_and_proxy(tmp_path):
    from metareward.errors import InputError
    from metareward.evaluation.suites.run import parse_suites

    o = opts(judge="gpt-4-1106-preview", judge_engine="openai", judge_base_url="https://api.example/v1",
             judge_api_key_env="MY_KEY")
    spec = Evaluator(MODELS, o, tmp_path, log=lambda m: None).judge_spec("seed")
    assert (spec.engine.name, spec.engine.base_url, spec.engine.api_key_env) == ("openai", "https://api.example/v1",
                                                                                 "MY_KEY")
    assert spec.model == "gpt-4-1106-preview" and spec.id == "openai:gpt-4-1106-preview@https://api.example/v1"
    assert spec.describe(["gpt-4-1106-preview"])["proxy"] is False
    assert spec.describe(["gpt-4.1"])["proxy"] is True
    local = Evaluator(MODELS, opts(judge=None), tmp_path, log=lambda m: None).judge_spec("seed")
    assert (local.path, local.engine.name, local.describe(["gpt-4-1106-preview"])["proxy"]) == ("m0", "hf", True)
    assert parse_suites("alpacaeval2, ifeval") == ("alpacaeval2", "ifeval")
    with pytest.raises(InputError, match="unknown suite"):
        parse_suites("alpacaeval2,alpaca")
