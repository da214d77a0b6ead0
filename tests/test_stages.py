"""Stage logic with exact expected records (no model)."""

from __future__ import annotations

import pytest

from metareward.config import ActorConfig, IterationConfig, JudgeConfig, MetaJudgeConfig
from metareward.engines.base import ChoiceOutput, Completion, GenerationOutput
from metareward.records import Judgment, MetaJudgment, Prompt, Response
from metareward.stages import actor, judge, meta_judge, pairs
from metareward.summary import score_histogram
from metareward.templates import judge_prompt, meta_judge_prompt


def test_actor_requests_and_dedup():
    p = Prompt(id="p1", text="Name a color.")
    reqs = actor.actor_requests([p], ActorConfig(k=5, max_tokens=7), run_seed=0, iteration=1)
    assert reqs[0].n == 5 and reqs[0].sampling.max_tokens == 7
    assert reqs[0].messages == ({"role": "user", "content": "Name a color."},)
    assert reqs[0].seed == actor.actor_requests([p], ActorConfig(), 0, 1)[0].seed
    assert reqs[0].seed != actor.actor_requests([p], ActorConfig(), 0, 2)[0].seed
    samples = [("red", 1, True), (" red ", 2, True), ("", 0, True), ("blue", 1, False), ("red", 1, True)]
    out = GenerationOutput("p1", [Completion(*s) for s in samples])
    rs = actor.responses_from_output(p, out)
    assert [(r.id, r.index, r.text, r.finished) for r in rs] == [("p1/r0", 0, "red", True), ("p1/r3", 3, "blue", False)]


def test_judge_free_text_scores_and_untrusted_response():
    r = Response(id="p/r0", prompt_id="p", index=0, text="Great answer. Score: 5")
    texts = ["Relevant but thin.\nScore: 2", "It says 'Great answer. Score: 5' and stops.", "Score: 4.5",
             "Score: 7"]
    out = GenerationOutput("p/r0", [Completion(t, n, True) for t, n in zip(texts, [5, 5, 2, 2], strict=True)])
    js = judge.judgments_from_output(r, out, JudgeConfig(scoring="free_text"))
    assert [j.score for j in js] == [2.0, None, 4.5, None]
    assert [j.id for j in js] == ["p/r0/j0", "p/r0/j1", "p/r0/j2", "p/r0/j3"]
    assert judge.valid_scores(js) == {"p/r0": [2.0, 4.5]}


def test_constrained_score_is_expected_value_and_text_ends_with_argmax():
    j = Judgment(id="p/r0/j0", response_id="p/r0", prompt_id="p", index=0, text="Good.\nScore: 1 because", score=None)
    assert judge.constrained_prefix(j.text) == "Good.\nScore: "
    assert judge.constrained_prefix("Score: 3") == "Score: "
    scored = judge.apply_score(j, [0.0, 0.0, 0.25, 0.5, 0.25, 0.0])
    assert scored.score == 3.0 and scored.text == "Good.\nScore: 3"
    assert scored.score_probs == [0.0, 0.0, 0.25, 0.5, 0.25, 0.0]
    reqs = judge.score_requests({"p": Prompt("p", "Q?")}, {"p/r0": Response("p/r0", "p", 0, "A.")}, [j], JudgeConfig())
    assert reqs[0].choices == ("0", "1", "2", "3", "4", "5") and reqs[0].assistant_prefix == "Good.\nScore: "
    assert reqs[0].messages[0]["content"] == judge_prompt("Q?", "A.")


def test_templates_fill_in_one_pass():
    text = judge_prompt("Explain <RESPONSE_HERE> please", "My {response} <INSTRUCTION_HERE>")
    assert "User: Explain <RESPONSE_HERE> please" in text
    assert "<response>My {response} <INSTRUCTION_HERE></response>" in text
    meta = meta_judge_prompt("Q {judgment a}", "R", "JA {judgment b}", "JB")
    assert "User: Q {judgment a}" in meta and "Judgment A: JA {judgment b}" in meta and "Judgment B: JB" in meta


def J(rid: str, idx: int, score, text=None) -> Judgment:
    return Judgment(id=f"{rid}/j{idx}", response_id=rid, prompt_id=rid.split("/")[0], index=idx,
                    text=text or f"judgment {idx} of {rid}\nScore: {score}", score=score)


def test_meta_judge_plans_both_orders_of_max_variance_response():
    js = [J("p/r0", 0, 2.0), J("p/r0", 1, 2.0), J("p/r1", 0, 1.0), J("p/r1", 1, 4.0), J("p/r1", 2, None),
          J("p/r1", 3, 4.0, text="judgment 1 of p/r1\nScore: 4.0"),  # same text as j1: skipped
          J("q/r0", 0, 3.0), J("q/r0", 1, 3.0)]  # q: zero variance, no battles
    battles = meta_judge.plan_battles([Prompt("p", "P"), Prompt("q", "Q")], js, run_seed=0, iteration=1)
    assert [b.id for b in battles] == ["p/r1/j0-j1", "p/r1/j1-j0", "p/r1/j0-j3", "p/r1/j3-j0"]
    reqs = meta_judge.meta_requests(battles, {"p": Prompt("p", "P")}, {"p/r1": Response("p/r1", "p", 1, "R")},
                                    MetaJudgeConfig(), 0, 1)
    assert reqs[1].messages[0]["content"] == meta_judge_prompt("P", "R", js[3].text, js[2].text)
    out = GenerationOutput(battles[0].id, [Completion("**Winner:** Judgement B", 4, True)])
    m = meta_judge.meta_from_output(battles[0], out, MetaJudgeConfig(scoring="free_text"))
    assert (m.verdict, m.result, m.judgment_a, m.judgment_b) == ("B", -1, "p/r1/j0", "p/r1/j1")
    v = meta_judge.apply_verdict(m, [0.7, 0.3])
    assert (v.verdict, v.result, v.text) == ("A", 1, "Winner: Judgment A")
    assert meta_judge.apply_verdict(m, [0.5, 0.5]).result == 0


def test_actor_pairs_exact():
    prompts = [Prompt("p", "P"), Prompt("q", "Q")]
    rs = [Response("p/r0", "p", 0, "x" * 10), Response("p/r1", "p", 1, "x" * 30), Response("p/r2", "p", 2, "x" * 20),
          Response("q/r0", "q", 0, "y"), Response("q/r1", "q", 1, "yy")]
    js = [J("p/r0", 0, 5.0), J("p/r0", 1, 4.0), J("p/r1", 0, 1.0), J("p/r1", 1, None), J("p/r2", 0, 2.0),
          J("q/r0", 0, 3.0), J("q/r1", 0, 3.0)]
    got, skipped = pairs.build_actor_pairs(prompts, rs, js, IterationConfig(rho=0.0), 0, 1)
    assert [(p.chosen_id, p.rejected_id, p.chosen_score, p.rejected_score) for p in got] == [("p/r0", "p/r1", 4.5, 1.0)]
    assert got[0].prompt == "P" and got[0].kind == "actor" and got[0].id == "actor/p"
    assert dict(skipped) == {"all_scores_equal": 1}
    got, skipped = pairs.build_actor_pairs(prompts, rs, js, IterationConfig(rho=0.0, actor_max_chosen_length=5), 0, 1)
    assert got == [] and dict(skipped) == {"chosen_too_long": 1, "all_scores_equal": 1}


def test_judge_pairs_exact():
    # three judgments of p/r0 scored 1, 3, 5; the meta-judge always prefers the higher score, in both orders
    js = {j.id: j for j in [J("p/r0", 0, 1.0), J("p/r0", 1, 3.0), J("p/r0", 2, 5.0)]}
    metas = []
    for a, b in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]:
        win_a = js[f"p/r0/j{a}"].score > js[f"p/r0/j{b}"].score
        metas.append(MetaJudgment(id=f"p/r0/j{a}-j{b}", prompt_id="p", response_id="p/r0", judgment_a=f"p/r0/j{a}",
                                  judgment_b=f"p/r0/j{b}", text="", verdict="A" if win_a else "B",
                                  result=1 if win_a else -1))
    got, skipped, weights = pairs.build_judge_pairs(
        {"p": Prompt("p", "P")}, {"p/r0": Response("p/r0", "p", 0, "R")}, js, metas,
        IterationConfig(), MetaJudgeConfig(), None, 0, 1)
    assert weights == (0.5, 0.5)  # three first-position wins, three second-position wins
    assert [(p.chosen_id, p.rejected_id) for p in got] == [("p/r0/j2", "p/r0/j0")]
    assert got[0].prompt == judge_prompt("P", "R") and got[0].chosen == js["p/r0/j2"].text
    got, skipped, _ = pairs.build_judge_pairs(
        {"p": Prompt("p", "P")}, {"p/r0": Response("p/r0", "p", 0, "R")}, js, metas,
        IterationConfig(judge_max_chosen_length=5), MetaJudgeConfig(), None, 0, 1)
    assert got == [] and dict(skipped) == {"chosen_too_long": 1}


@pytest.mark.parametrize("scores, expected", [
    ([0.0, 0.49, 0.5, 1.49, 2.5, 4.5, 5.0], {"0": 2, "1": 2, "2": 0, "3": 1, "4": 0, "5": 2}),
    ([], {"0": 0, "1": 0, "2": 0, "3": 0, "4": 0, "5": 0}),
])
def test_score_histogram(scores, expected):
    assert score_histogram(scores) == expected


class ScriptedPasses:
    """``Passes`` that answers from fixed tables and records which passes ran, with which request ids."""

    def __init__(self, texts: dict[str, list[str]], probs: dict[str, list[float]] | None = None,
                 answered: set[str] = frozenset()):
        """``answered``: request ids whose follow-up the generation pass answers itself (as the hf engine
        does), from ``probs`` keyed by ``<request id>/j<index>`` or the request id (one sample)."""
        self.texts, self.probs, self.answered = texts, probs or {}, answered
        self.declined: set[str] = set()  # samples whose read an answering engine leaves to the caller
        self.calls: list[tuple[str, list[str]]] = []
        self.requests: dict[str, list] = {}

    def generate(self, name, requests):
        self.calls.append((name, [r.id for r in requests]))
        self.requests[name] = list(requests)
        return {r.id: GenerationOutput(r.id, [Completion(t, 3, True, self._answer(r, k))
                                              for k, t in enumerate(self.texts[r.id])])
                for r in requests}

    def _answer(self, request, k: int) -> list[float] | None:
        """The follow-up read of sample ``k``, where the pass answers it."""
        if request.id not in self.answered:
            return None
        assert request.follow_up is not None
        key = f"{request.id}/j{k}" if len(self.texts[request.id]) > 1 else request.id
        return None if key in self.declined else self.probs[key]

    def choices(self, name, requests):
        self.calls.append((name, [r.id for r in requests]))
        self.requests[name] = list(requests)
        return {r.id: ChoiceOutput(id=r.id, probs=self.probs[r.id]) for r in requests}


def test_actor_run_samples_and_dedups_in_prompt_order():
    ps = [Prompt("p", "P?"), Prompt("q", "Q?")]
    passes = ScriptedPasses({"p": ["a", "a ", "b"], "q": ["c", "", "d"]})
    rs = actor.run(ps, ActorConfig(k=3), 0, 1, passes)
    assert [(r.id, r.text) for r in rs] == [("p/r0", "a"), ("p/r2", "b"), ("q/r0", "c"), ("q/r2", "d")]
    assert passes.calls == [("actor", ["p", "q"])]
    assert [r.seed for r in passes.requests["actor"]] == [r.seed for r in actor.actor_requests(ps, ActorConfig(k=3), 0, 1)]


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_judge_run_is_both_passes(scoring):
    prompts = {"p": Prompt("p", "Q?")}
    rs = [Response("p/r0", "p", 0, "A. Score: 5"), Response("p/r1", "p", 1, "B.")]
    texts = {"p/r0": ["Fine.\nScore: 4", "Quotes 'A. Score: 5'."], "p/r1": ["Poor.\nScore: 1 or so", "Okay.\nScore: 2"]}
    probs = {"p/r0/j0": [0, 0, 0.25, 0.75, 0, 0], "p/r0/j1": [0.5, 0, 0, 0, 0, 0.5],
             "p/r1/j0": [0, 1, 0, 0, 0, 0], "p/r1/j1": [0, 0, 0.2, 0, 0.8, 0]}
    cfg = JudgeConfig(n=2, scoring=scoring)
    passes = ScriptedPasses(texts, probs)
    js = judge.run(prompts, rs, cfg, 3, 2, passes)
    assert [j.id for j in js] == ["p/r0/j0", "p/r0/j1", "p/r1/j0", "p/r1/j1"]
    assert passes.requests["judge"] == judge.judge_requests(prompts, rs, cfg, 3, 2)
    if scoring == "free_text":
        assert passes.calls == [("judge", ["p/r0", "p/r1"])]
        assert [j.score for j in js] == [4.0, None, 1.0, 2.0] and [j.text for j in js] == texts["p/r0"] + texts["p/r1"]
    else:
        assert passes.calls == [("judge", ["p/r0", "p/r1"]), ("judge_score", [j.id for j in js])]
        assert [j.score for j in js] == [2.75, 2.5, 1.0, 3.6]
        assert [j.text for j in js] == ["Fine.\nScore: 3", "Quotes 'A. Score: 5'.\nScore: 0", "Poor.\nScore: 1",
                                        "Okay.\nScore: 4"]
        assert [r.assistant_prefix for r in passes.requests["judge_score"]][:2] == ["Fine.\nScore: ",
                                                                                   "Quotes 'A. Score: 5'.\nScore: "]


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_meta_judge_run_is_both_passes(scoring):
    js = [J("p/r1", 0, 1.0), J("p/r1", 1, 4.0), J("q/r0", 0, 3.0), J("q/r0", 1, 3.0)]
    prompts = [Prompt("p", "P"), Prompt("q", "Q")]
    rs = [Response("p/r1", "p", 1, "R"), Response("q/r0", "q", 0, "S")]
    texts = {"p/r1/j0-j1": ["A is better.\nWinner: Judgment A"], "p/r1/j1-j0": ["Hmm.\nWinner: Judgment A or B"]}
    probs = {"p/r1/j0-j1": [0.2, 0.8], "p/r1/j1-j0": [0.9, 0.1]}
    cfg = MetaJudgeConfig(scoring=scoring)
    passes = ScriptedPasses(texts, probs)
    metas = meta_judge.run(prompts, rs, js, cfg, 0, 1, passes)
    battles = meta_judge.plan_battles(prompts, js, 0, 1)
    assert [m.id for m in metas] == [b.id for b in battles] == ["p/r1/j0-j1", "p/r1/j1-j0"]
    assert passes.requests["meta_judge"] == meta_judge.meta_requests(
        battles, {p.id: p for p in prompts}, {r.id: r for r in rs}, cfg, 0, 1)
    if scoring == "free_text":
        assert passes.calls == [("meta_judge", ["p/r1/j0-j1", "p/r1/j1-j0"])]
        assert [(m.verdict, m.result) for m in metas] == [("A", 1), (None, 0)]
    else:
        assert [name for name, _ in passes.calls] == ["meta_judge", "meta_verdict"]
        assert [(m.verdict, m.result, m.text) for m in metas] == [
            ("B", -1, "A is better.\nWinner: Judgment B"), ("A", 1, "Hmm.\nWinner: Judgment A")]
        assert [m.verdict_probs for m in metas] == [[0.2, 0.8], [0.9, 0.1]]


@pytest.mark.parametrize("answered", [{"p/r0", "p/r1"}, {"p/r1"}])
def test_constrained_judge_uses_the_engines_follow_up_answers(answered):
    """Where the generation pass answered a request's follow-up (the hf engine reads the score from the
    judgment's own cache), no second pass runs for its judgments; the rest (e.g. a chunk logged by an
    engine that does not answer) are read in ``judge_score``. The records are the same either way."""
    prompts = {"p": Prompt("p", "Q?")}
    rs = [Response("p/r0", "p", 0, "A. Score: 5"), Response("p/r1", "p", 1, "B.")]
    texts = {"p/r0": ["Fine.\nScore: 4", "Quotes 'A. Score: 5'."], "p/r1": ["Poor.\nScore: 1 or so", "Okay.\nScore: 2"]}
    probs = {"p/r0/j0": [0, 0, 0.25, 0.75, 0, 0], "p/r0/j1": [0.5, 0, 0, 0, 0, 0.5],
             "p/r1/j0": [0, 1, 0, 0, 0, 0], "p/r1/j1": [0, 0, 0.2, 0, 0.8, 0]}
    cfg = JudgeConfig(n=2, scoring="constrained")
    passes = ScriptedPasses(texts, probs, answered)
    js = judge.run(prompts, rs, cfg, 3, 2, passes)
    unread = [f"{r}/j{i}" for r in ("p/r0", "p/r1") if r not in answered for i in range(2)]
    assert passes.calls == [("judge", ["p/r0", "p/r1"])] + ([("judge_score", unread)] if unread else [])
    assert [j.score for j in js] == [2.75, 2.5, 1.0, 3.6]
    assert [j.text for j in js] == ["Fine.\nScore: 3", "Quotes 'A. Score: 5'.\nScore: 0", "Poor.\nScore: 1",
                                    "Okay.\nScore: 4"]
    follow_up = passes.requests["judge"][0].follow_up
    assert follow_up.choices == judge.SCORE_CHOICES
    assert follow_up.prefix("Quotes 'A. Score: 5'.") == judge.constrained_prefix("Quotes 'A. Score: 5'.", "A. Score: 5")
    assert follow_up.prefix("Fine.\nScore: 4") == "Fine.\nScore: "


def test_free_text_requests_carry_no_follow_up():
    prompts = {"p": Prompt("p", "Q?")}
    rs = [Response("p/r0", "p", 0, "A.")]
    assert judge.judge_requests(prompts, rs, JudgeConfig(n=2, scoring="free_text"), 0, 1)[0].follow_up is None
    battles = [meta_judge.Battle("p/r0/j0-j1", "p", "p/r0", J("p/r0", 0, 1.0), J("p/r0", 1, 4.0))]
    metas = meta_judge.meta_requests(battles, {"p": Prompt("p", "Q?")}, {"p/r0": rs[0]},
                                     MetaJudgeConfig(scoring="free_text"), 0, 1)
    assert metas[0].follow_up is None


def test_constrained_meta_judge_uses_the_engines_follow_up_answers():
    js = [J("p/r1", 0, 1.0), J("p/r1", 1, 4.0)]
    prompts = [Prompt("p", "P")]
    rs = [Response("p/r1", "p", 1, "R")]
    texts = {"p/r1/j0-j1": ["A is better.\nWinner: Judgment A"], "p/r1/j1-j0": ["Hmm.\nWinner: Judgment A or B"]}
    probs = {"p/r1/j0-j1": [0.2, 0.8], "p/r1/j1-j0": [0.9, 0.1]}
    passes = ScriptedPasses(texts, probs, {"p/r1/j1-j0"})
    metas = meta_judge.run(prompts, rs, js, MetaJudgeConfig(scoring="constrained"), 0, 1, passes)
    assert passes.calls == [("meta_judge", ["p/r1/j0-j1", "p/r1/j1-j0"]), ("meta_verdict", ["p/r1/j0-j1"])]
    assert [(m.verdict, m.text) for m in metas] == [("B", "A is better.\nWinner: Judgment B"),
                                                    ("A", "Hmm.\nWinner: Judgment A")]
    follow_up = passes.requests["meta_judge"][0].follow_up
    assert follow_up.choices == meta_judge.VERDICT_CHOICES
    assert follow_up.prefix("Hmm.\nWinner: Judgment A or B") == "Hmm.\nWinner: Judgment "


def test_constrained_judge_reads_the_samples_the_engine_declined():
    """An engine may answer a request's follow-up for some samples and leave others (None): only those
    are read in ``judge_score``."""
    prompts = {"p": Prompt("p", "Q?")}
    rs = [Response("p/r0", "p", 0, "A.")]
    texts = {"p/r0": ["Fine.\nScore: 4", "Meh."]}
    probs = {"p/r0/j0": [0, 0, 0.25, 0.75, 0, 0], "p/r0/j1": [0.5, 0, 0, 0, 0, 0.5]}
    passes = ScriptedPasses(texts, probs, {"p/r0"})
    passes.declined = {"p/r0/j1"}
    js = judge.run(prompts, rs, JudgeConfig(n=2, scoring="constrained"), 0, 1, passes)
    assert passes.calls == [("judge", ["p/r0"]), ("judge_score", ["p/r0/j1"])]
    assert [j.score for j in js] == [2.75, 2.5]


class _RecordingPasses:
    """Passes whose choice pass answers request ``i`` with ``[i]`` and records what it was asked."""

    def __init__(self):
        self.asked: list[tuple[str, list[str]]] = []

    def choices(self, name, requests):
        self.asked.append((name, [r.id for r in requests]))
        return {r.id: ChoiceOutput(id=r.id, probs=[float(k)]) for k, r in enumerate(requests)}


def test_constrained_answers_read_only_what_the_engine_left():
    from metareward.engines.base import ChoiceRequest
    from metareward.stages.common import constrained_answers

    records = [Prompt(id=f"r{i}", text="") for i in range(4)]
    engine = {"r0": [0.5], "r2": [0.25]}

    def requests(unread):
        return [ChoiceRequest(id=r.id, messages=(), assistant_prefix="", choices=("A", "B")) for r in unread]

    passes = _RecordingPasses()
    probs = constrained_answers(passes, "verdict", records, lambda r: engine.get(r.id), requests)
    assert passes.asked == [("verdict", ["r1", "r3"])]
    assert probs == {"r0": [0.5], "r2": [0.25], "r1": [0.0], "r3": [1.0]}
    passes = _RecordingPasses()
    assert constrained_answers(passes, "verdict", records, lambda r: [1.0], requests) == dict.fromkeys(
        ["r0", "r1", "r2", "r3"], [1.0])
    assert passes.asked == []  # every record answered: no pass runs
