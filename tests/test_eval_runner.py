"""``metareward eval`` plumbing with a fake engine (exact numbers), and one run on the real model."""

from __future__ import annotations

import json
import re

import pytest

from metareward.engines.base import ChoiceOutput, Completion, Engine, GenerationOutput
from metareward.errors import InputError
from metareward.evaluation.known_order import known_order_set, truncate
from metareward.evaluation.runner import EvalOptions, Evaluator, format_table
from metareward.evaluation.winrate import PromptOutcome, parse_pair_verdict, summarize


class FakeEngine(Engine):
    """Answers ``<name>: <prompt>`` padded to the length in the name (``long``/``short``); as a judge it
    reads the score planted in the response text (``[s=4]``) and, pairwise, prefers the longer answer
    (``position_biased``: always Assistant A)."""

    def __init__(self, name: str):
        self.name_ = name
        self.calls = 0

    def _answer(self, content: str) -> str:
        if "<response>" in content:  # the paper's judge prompt
            resp = content.split("<response>", 1)[1].rsplit("</response>", 1)[0]
            m = re.search(r"\[s=(\w+)\]", resp)
            return f"Looks fine. Score: {m.group(1)}" if m and m.group(1) != "none" else "I cannot say."
        if "[The Start of Assistant A's Answer]" in content:
            if self.name_ == "position_biased":
                return "A is better. [[A]]"
            a = content.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End", 1)[0]
            b = content.split("[The Start of Assistant B's Answer]\n", 1)[1].split("\n[The End", 1)[0]
            return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"
        pad = {"long": 200, "short": 20}.get(self.name_, 50)
        return (f"{self.name_}: " + content)[:pad].ljust(pad, ".")

    def generate(self, requests):
        for r in requests:
            self.calls += 1
            text = self._answer(r.messages[-1]["content"])
            yield GenerationOutput(r.id, (Completion(text, len(text) // 4, True),) * r.n)

    def choice_probs(self, requests):
        for r in requests:
            content = r.messages[-1]["content"]
            m = re.search(r"\[s=(\d)\]", content.split("<response>", 1)[-1])
            k = int(m.group(1)) if m else 0
            yield ChoiceOutput(id=r.id, probs=[0.5 if i == k else 0.1 for i in range(6)])


def ranked_file(tmp_path):
    rows = [
        {"id": "q1", "prompt": "Q1?", "responses": [
            {"text": "best [s=5]", "rank": 0}, {"text": "mid [s=3]", "rank": 1}, {"text": "bad [s=3]", "rank": 2}]},
        {"id": "q2", "prompt": "Q2?", "responses": [
            {"text": "best [s=2]", "rank": 0}, {"text": "worse [s=4]", "rank": 1}, {"text": "unscored [s=none]", "rank": 2}]},
    ]
    path = tmp_path / "ranked.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_agreement_exact_with_fake_judge(tmp_path):
    opts = EvalOptions(parts=("agreement",), agreement_set=str(ranked_file(tmp_path)), judge_n=2)
    rep = Evaluator([("m", "m")], opts, tmp_path / "out", engine_factory=FakeEngine, log=lambda s: None).run()
    a = rep["results"]["m"]["agreement"]
    # q1: 5>3 ok, 5>3 ok, 3=3 judge tie; q2: 2<4 wrong, two pairs with an unscored response
    assert (a["pairs"], a["judge_ties"], a["unscored_pairs"]) == (6, 1, 2)
    assert a["agreement"] == pytest.approx(2 / 6)
    assert a["agreement_without_ties"] == pytest.approx(2 / 3)
    assert a["parse_rate"] == pytest.approx(10 / 12)
    # q1: judge [5,3,3] vs human [0,-1,-2]: rho = sqrt(3)/2; q2: [2,4] vs [0,-1]: -1
    assert a["spearman"] == pytest.approx((3**0.5 / 2 - 1) / 2)
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["results"]["m"]["agreement"]["pairs"] == 6


def test_agreement_constrained_mode(tmp_path):
    opts = EvalOptions(parts=("agreement",), agreement_set=str(ranked_file(tmp_path)), judge_n=1,
                       scoring="constrained")
    rep = Evaluator([("m", "m")], opts, tmp_path / "out", engine_factory=FakeEngine, log=lambda s: None).run()
    a = rep["results"]["m"]["agreement"]
    assert a["parse_rate"] == 1.0  # every judgment is valid in constrained mode
    # expected score with mass 0.5 on the planted digit k, 0.1 elsewhere: (0.5k + 0.1(15-k)) / 1.0
    assert a["pairs"] == 6 and a["unscored_pairs"] == 0


def test_winrate_consistent_and_position_biased_judges(tmp_path):
    models = [("short", "short"), ("long", "long")]
    opts = EvalOptions(parts=("winrate", "length"), limit=5, baseline="short", judge="length_judge")
    rep = Evaluator(models, opts, tmp_path / "a", engine_factory=FakeEngine, log=lambda s: None).run()
    w = rep["results"]["long"]["winrate"]
    assert (w["wins"], w["losses"], w["ties"], w["inconsistent"]) == (5, 0, 0, 0)
    assert w["win_rate"] == 100.0 and w["win_rate_ci95"] == [100.0, 100.0]
    assert rep["results"]["long"]["length"]["mean"] == 200.0
    assert rep["results"]["short"]["length"]["mean"] == 20.0
    assert "winrate" not in rep["results"]["short"]  # the baseline is not compared with itself
    outputs = (tmp_path / "a" / "outputs" / "long.prompts.jsonl").read_text().splitlines()
    assert len(outputs) == 5 and json.loads(outputs[0])["id"] == "mt81"

    opts = EvalOptions(parts=("winrate",), limit=5, baseline="short", judge="position_biased")
    rep = Evaluator(models, opts, tmp_path / "b", engine_factory=FakeEngine, log=lambda s: None).run()
    w = rep["results"]["long"]["winrate"]
    assert (w["wins"], w["ties"], w["inconsistent"]) == (0, 5, 5)
    assert w["win_rate"] == 50.0 and w["judge_first_position_rate"] == 1.0
    assert "long" in format_table(rep) and "50.0 [50.0, 50.0]" in format_table(rep)


def test_winrate_against_reference_answers(tmp_path):
    # MT-Bench GPT-4 references exist for questions 101-130 (math, reasoning, coding ...)
    from metareward.evaluation.prompt_sets import mtbench_reference

    refs = mtbench_reference()
    assert len(refs) == 30 and "mt101" in refs
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": k, "prompt": f"Q {k}"}) for k in ["mt101", "mt102", "zzz"]) + "\n")
    opts = EvalOptions(parts=("winrate",), prompt_set=str(prompts), baseline="reference:mtbench-gpt4", judge="j")
    rep = Evaluator([("short", "short")], opts, tmp_path / "o", engine_factory=FakeEngine, log=lambda s: None).run()
    w = rep["results"]["short"]["winrate"]
    assert w["prompts"] == 2 and w["losses"] == 2  # GPT-4's answers are longer than 20 characters


def test_resume_reuses_generations(tmp_path):
    engines = []

    def factory(name):
        engines.append(FakeEngine(name))
        return engines[-1]

    opts = EvalOptions(parts=("length",), limit=4)
    Evaluator([("long", "long")], opts, tmp_path, engine_factory=factory, log=lambda s: None).run()
    Evaluator([("long", "long")], opts, tmp_path, engine_factory=factory, log=lambda s: None).run()
    assert [e.calls for e in engines] == [4, 0]
    Evaluator([("alias", "long")], opts, tmp_path, engine_factory=factory, log=lambda s: None).run()
    assert engines[-1].calls == 0  # another label of the same model reuses its answers


def test_ifbench_part_structure(tmp_path):
    opts = EvalOptions(parts=("ifbench",), limit=3)
    rep = Evaluator([("long", "long")], opts, tmp_path, engine_factory=FakeEngine, log=lambda s: None).run()
    s = rep["results"]["long"]["ifbench"]
    assert s["prompts"] == 3 and s["prompts_checked"] == 3
    assert 0.0 <= s["prompt_strict"] <= s["prompt_loose"] <= 1.0


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="unknown part"):
        Evaluator([("m", "m")], EvalOptions(parts=("nope",)), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "responses": [{"text": "a", "rank": 0}, {"text": "b"}]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'responses\[1\]' must be an object"):
        Evaluator([("m", "m")], EvalOptions(parts=("agreement",), agreement_set=str(bad)), tmp_path,
                  engine_factory=FakeEngine, log=lambda s: None).run()
    with pytest.raises(InputError, match="baseline"):
        Evaluator([("m", "m")], EvalOptions(parts=("winrate",), limit=2, baseline="other"), tmp_path,
                  engine_factory=FakeEngine, log=lambda s: None).run()


def test_known_order_set_is_deterministic_and_ordered():
    s = known_order_set()
    assert len(s) == 20 and s == known_order_set()
    for i, p in enumerate(s):
        full, trunc, other, off = p.responses
        assert [r.rank for r in p.responses] == [0, 1, 2, 2]
        assert full.text.startswith(trunc.text) and len(trunc.text) < 0.45 * len(full.text)
        assert other.text == s[(i + 7) % 20].responses[0].text != full.text
        assert off.kind == "off_topic"
    assert truncate("one two three four five six seven eight nine ten", 0.4) == "one two three four"


def test_pair_verdicts():
    assert parse_pair_verdict("x [[A]] then [[B]]") == "B"
    assert parse_pair_verdict("no verdict") is None
    o = PromptOutcome("p", "A", "A", 10, 10)  # the judge picks position A both times: inconsistent
    assert o.outcomes == ("win", "loss") and o.preference == 0.5
    assert summarize([PromptOutcome("p", "A", "B", 10, 5), PromptOutcome("q", "C", None, 5, 5)])["wins"] == 1


@pytest.mark.slow
def test_eval_on_the_real_model(tmp_path):
    """Every part once on SmolLM2-135M, one prompt each, 16-token outputs (a minute on 2 free CPU cores).

    The two labels are the same model, so their answers are generated once (keyed by model path)."""
    import torch

    from metareward.config import EngineConfig

    torch.set_num_threads(2)
    opts = EvalOptions(parts=("agreement", "winrate", "ifbench", "length"), limit=1, agreement_limit=1, judge_n=1,
                       judge_max_tokens=16, max_tokens=16, verdict_max_tokens=16, verdict_mode="constrained",
                       scoring="constrained", engine=EngineConfig(device="cpu", dtype="float32", batch_size=8))
    models = [("seed", "smollm2-135m"), ("again", "smollm2-135m")]
    rep = Evaluator(models, opts, tmp_path, log=lambda s: None).run()
    r = rep["results"]
    assert r["seed"]["agreement"]["pairs"] == 5 and r["seed"]["agreement"]["parse_rate"] == 1.0
    # same model, greedy answers: both sides are the same text, so the judge sees the same prompt in
    # both orders and gives the same verdict twice -- A twice or B twice is position-inconsistent, C is a
    # tie: every prompt must come out a tie, whatever the judge thinks
    w = r["again"]["winrate"]
    assert (w["prompts"], w["ties"], w["win_rate"]) == (1, 1, 50.0)
    assert r["seed"]["length"]["n"] == 1 and r["seed"]["ifbench"]["prompts"] == 1
    assert r["again"]["agreement"] == r["seed"]["agreement"]  # shared generations, same numbers


def test_cli_eval_input_errors(tmp_path, capsys):
    from metareward.cli import main

    assert main(["eval"]) == 2
    assert "--run-dir" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["eval", "--models", "no/such/model/here!", "--parts", "length"]) == 2
    assert main(["eval", "--models", "smollm2-135m", "--parts", "bogus"]) == 2
    assert "unknown part" in capsys.readouterr().err
