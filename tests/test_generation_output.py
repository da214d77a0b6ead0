"""The engine interface's per-sample outputs (``engines.base.Completion`` in a ``GenerationOutput``) and
the parallel-list form logs store them in (``to_columns`` / ``from_columns``).

The form is the one engines returned before outputs held ``Completion``s: a stage interrupted under that
code left chunk logs in it, and rerunning the stage now must resume from them. The last tests write such
logs literally, as that code wrote them, and resume the judge stage from them.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fakes import FakeEngine
from hypothesis import given
from hypothesis import strategies as st

from metareward.config import JudgeConfig
from metareward.engines.base import Completion, GenerationOutput, GenerationRequest, SamplingParams
from metareward.engines.openai import OpenAIEngine, sub_seed
from metareward.engines.vllm import VLLMEngine
from metareward.records import Judgment, Prompt, Response
from metareward.stages import judge
from metareward.stages.chunks import ChunkedPasses


def test_samples_are_frozen_in_order_with_texts_and_token_total():
    out = GenerationOutput("q", [Completion("a", 3, True), Completion("b", 5, False, [0.25, 0.75])])
    assert out.samples == (Completion("a", 3, True), Completion("b", 5, False, [0.25, 0.75]))
    assert out.texts == ["a", "b"] and out.generated_tokens == 8
    with pytest.raises(AttributeError):
        out.samples[0].text = "c"  # type: ignore[misc]


def test_columns_are_the_logs_parallel_lists():
    plain = GenerationOutput("q", (Completion("a", 3, True), Completion("b", 5, False)))
    assert plain.to_columns() == {"id": "q", "texts": ["a", "b"], "n_tokens": [3, 5], "finished": [True, False],
                                  "choice_probs": None}
    partly = GenerationOutput("q", (Completion("a", 3, True, [0.5, 0.5]), Completion("b", 5, False)))
    assert partly.to_columns()["choice_probs"] == [[0.5, 0.5], None]
    assert list(partly.to_columns()) == ["id", "texts", "n_tokens", "finished", "choice_probs"]  # the logged order


def test_from_columns_reads_logs_without_choice_probs_and_refuses_ragged_ones():
    assert GenerationOutput.from_columns({"id": "q", "texts": ["a"], "n_tokens": [2], "finished": [True]}) == \
        GenerationOutput("q", (Completion("a", 2, True),))
    with pytest.raises(ValueError):
        GenerationOutput.from_columns({"id": "q", "texts": ["a", "b"], "n_tokens": [2], "finished": [True, True]})


probabilities = st.lists(st.floats(0, 1), min_size=2, max_size=6)
completions = st.builds(Completion, st.text(), st.integers(0, 4096), st.booleans(), st.none() | probabilities)


@given(st.text(), st.lists(completions, max_size=8))
def test_columns_round_trip_through_json(rid, samples):
    out = GenerationOutput(rid, samples)
    assert GenerationOutput.from_columns(json.loads(json.dumps(out.to_columns()))) == out


# ------------------------------------------------------- engines without a model here: replies to samples
# (the engines against real servers and vLLM: tests/test_engine_openai.py and tests/test_engine_vllm.py)

REQUEST = GenerationRequest("q", ({"role": "user", "content": "Hi."},), SamplingParams(max_tokens=8), n=2, seed=5)


def reply(choices, completion_tokens):
    """A chat-completion reply: ``choices`` as (index, text, finish reason)."""
    return SimpleNamespace(usage=SimpleNamespace(completion_tokens=completion_tokens), choices=[
        SimpleNamespace(index=i, message=SimpleNamespace(content=t), finish_reason=f) for i, t, f in choices])


def test_openai_engine_gives_one_completion_per_choice_in_index_order(monkeypatch):
    eng = OpenAIEngine("http://127.0.0.1:9/v1", "judge", check_model=False)
    monkeypatch.setattr(eng, "_create", lambda what, **params: reply([(1, "  bb ", "length"), (0, "a", "stop")], 9))
    (out,) = eng.generate([REQUEST])
    # no local tokenizer: the reply's 9 tokens split by characters, 1 : 5 (texts as sent, before stripping)
    assert out == GenerationOutput("q", (Completion("a", 2, True), Completion("bb", 8, False)))


def test_openai_engine_fanned_out_gives_one_completion_per_single_sample_request(monkeypatch):
    eng = OpenAIEngine("http://127.0.0.1:9/v1", "judge", check_model=False)
    asked = []

    def create(what, n, seed, **params):
        asked.append((n, seed))
        if n > 1:
            return reply([(0, "one sample only", "stop")], 4)  # a server that ignores n
        k = len(asked) - 2
        return reply([(0, f" s{k}", "stop" if k else "length")], 3 + k)

    monkeypatch.setattr(eng, "_create", create)
    (out,) = eng.generate([REQUEST])
    assert asked[1:] == [(1, sub_seed(5, 0)), (1, sub_seed(5, 1))]
    assert out == GenerationOutput("q", (Completion("s0", 3, False), Completion("s1", 4, True)))


def test_vllm_engine_gives_one_completion_per_sample_in_index_order():
    """``VLLMEngine.generate`` on a stand-in for ``vllm.LLM`` (vLLM's outputs, one ``CompletionOutput``
    per sample, in any order): no vLLM is needed to check what the engine makes of them."""
    eng = VLLMEngine.__new__(VLLMEngine)  # no model: the attributes generate reads
    eng.render, eng.stop_ids, eng._SamplingParams = (lambda messages: [1, 2]), [0], dict
    samples = [SimpleNamespace(index=1, text=" b ", token_ids=[5, 6, 7], finish_reason="length"),
               SimpleNamespace(index=0, text="a", token_ids=[4, 0], finish_reason="stop")]
    eng.llm = SimpleNamespace(generate=lambda prompts, params, use_tqdm: [SimpleNamespace(outputs=samples)])
    (out,) = eng.generate([REQUEST])
    assert out == GenerationOutput("q", (Completion("a", 2, True), Completion("b", 3, False)))


# ------------------------------------------------------------- resuming from a chunk log written before

PROMPTS = {"p": Prompt("p", "Name a colour.")}
RESPONSES = [Response("p/r0", "p", 0, "Red."), Response("p/r1", "p", 1, "Blue.")]
CONSTRAINED = JudgeConfig(n=2, max_tokens=16, scoring="constrained")

# chunk 0 of the judge pass (response p/r0's two judgments), as the code before Completion logged it
# (``dataclasses.asdict`` of an output with parallel lists), with the hf engine's follow-up answers ...
ANSWERED = ('{"chunk": 0, "outputs": [{"id": "p/r0", "texts": ["Names a colour.\\nScore: 4", "Short."], '
            '"n_tokens": [7, 3], "finished": [true, false], '
            '"choice_probs": [[0.0, 0.0, 0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]}], '
            '"seconds": 1.5, "warm_up": true}\n')
# ... from an engine that left the reads to the stage, and from the code before follow-ups (no field)
UNANSWERED = ANSWERED.replace('[[0.0, 0.0, 0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]', "null")
OLDEST = ANSWERED.replace(', "choice_probs": [[0.0, 0.0, 0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]', "")


class RecordingEngine(FakeEngine):
    """``FakeEngine`` that records the ids of every request it is asked."""

    def __init__(self):
        super().__init__(free_text_scores=False)
        self.asked: list[str] = []

    def generate(self, requests):
        self.asked += [r.id for r in requests]
        yield from super().generate(requests)

    def choice_probs(self, requests):
        self.asked += [r.id for r in requests]
        yield from super().choice_probs(requests)


def judge_stage(work, engine):
    """The judge stage as the loop runs it: chunk logs under ``work``, one response (2 samples) a chunk."""
    passes = ChunkedPasses(lambda: engine, lambda name: work / f"{name}.chunks.jsonl", chunk_size=2)
    return judge.run(PROMPTS, RESPONSES, CONSTRAINED, run_seed=0, iteration=1, passes=passes)


def test_the_judge_stage_resumes_from_a_logged_chunk_with_follow_up_answers(tmp_path):
    (tmp_path / "judge.chunks.jsonl").write_text(ANSWERED, encoding="utf-8")
    engine = RecordingEngine()
    judgments = judge_stage(tmp_path, engine)
    # chunk 0 is read from the log (texts, token counts and the logged answers), not generated or re-read
    assert judgments[:2] == [
        Judgment("p/r0/j0", "p/r0", "p", 0, "Names a colour.\nScore: 3", 3.5, [0.0, 0.0, 0.0, 0.5, 0.5, 0.0], 7),
        Judgment("p/r0/j1", "p/r0", "p", 1, "Short.\nScore: 1", 1.0, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 3),
    ]
    assert engine.asked == ["p/r1", "p/r1/j0", "p/r1/j1"]  # chunk 1 generated, its scores read
    assert judgments[2:] == judge_stage(tmp_path / "fresh", RecordingEngine())[2:]  # as if never interrupted
    first, second = (tmp_path / "judge.chunks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert first == ANSWERED  # the old line is kept as it was; the new one is in the same form
    assert list(json.loads(second)["outputs"][0]) == ["id", "texts", "n_tokens", "finished", "choice_probs"]


@pytest.mark.parametrize("logged", [UNANSWERED, OLDEST], ids=["choice_probs null", "no choice_probs"])
def test_the_judge_stage_resumes_from_a_logged_chunk_without_answers(tmp_path, logged):
    (tmp_path / "judge.chunks.jsonl").write_text(logged, encoding="utf-8")
    engine = RecordingEngine()
    judgments = judge_stage(tmp_path, engine)
    assert [(j.id, j.n_tokens) for j in judgments[:2]] == [("p/r0/j0", 7), ("p/r0/j1", 3)]
    assert [j.text.rsplit("\nScore: ", 1)[0] for j in judgments[:2]] == ["Names a colour.", "Short."]
    # the logged judgments' scores are read in the score pass, with chunk 1's
    assert engine.asked == ["p/r1", "p/r0/j0", "p/r0/j1", "p/r1/j0", "p/r1/j1"]
    probs = {o.id: o.probs for o in FakeEngine().choice_probs(judge.score_requests(
        PROMPTS, {r.id: r for r in RESPONSES}, judgments, CONSTRAINED))}
    assert [j.score_probs for j in judgments] == [[round(p, 6) for p in probs[j.id]] for j in judgments]
