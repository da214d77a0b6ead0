"""``ChoiceFollowUp``: the hf engine reads a choice distribution from each finished sample's own cache.

* float32 (the torch path, which carries finished rows to the end of a batch): every sample's follow-up
  probabilities equal an independent forward over the prompt plus ``choice_context(prefix(text))``,
  whether the context shares all but a few tokens with what was sampled (``"\\nScore: "`` appended), none
  (a preamble put before the text), or needs several feeding chunks (a preamble longer than
  ``FEED_CHUNK``); rows needing few tokens and rows needing many are fed apart (``feed_groups``); a
  request without a follow-up in the same batch gets none;
* ``feed_groups``: exact partitions for small cases, and never costlier than any other split;
* bf16 with the C++ kernels (rows leave the batch at once and are parked, kept through the buffers'
  growth; the shared remainders promoted into the prompts; narrow contexts fed as decoding steps through
  the kernel's masked attention): the texts are those drawn without follow-ups, and the probabilities are
  those ``choice_probs`` gives, to bf16 rounding;
* chunk logs keep the probabilities, and a logged output without them loads as ``None``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hf_trace import bf16_twin, embedded_engine, independent_choice_probs, record_feeds

from metareward.engines.base import (
    ChoiceFollowUp,
    ChoiceRequest,
    Completion,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from metareward.engines.hf import cache as cache_module
from metareward.engines.hf import schedule as schedule_module
from metareward.engines.hf.fused_decoder import FusedDecoder
from metareward.stages.chunks import ChunkedPasses
from metareward.stages.judge import SCORE_CHOICES, ScorePrefix
from metareward.templates import judge_prompt

CASES = [
    ("What is 2+2?", "4"),
    ("Write a haiku about autumn leaves.", "Leaves fall slowly\nred and gold upon the ground\nautumn whispers low"),
    ("Explain why the sky is blue.", "Rayleigh scattering."),
]
PREAMBLE = "Reviewer notes, kept verbatim for the record. " * 12  # > FEED_CHUNK tokens
# The bf16 test's judge prompt, cut to the rubric's gist: what the engine does with it depends only on the
# prompts sharing a root of over ``min_shared`` tokens (here 81, the chat template's system turn included)
# and differing after it, not on the rubric's length (the paper's judge prompt is ~300 tokens more per
# prompt, every one of them prefilled again in bf16 by each generate and choice_probs call).
SHORT_JUDGE = ("Review the user's question and the corresponding response using the additive 5-point scoring "
               "system: add a point each for relevance, for addressing most of the question, for a useful answer, "
               "for a clear and direct one, and for an expert, engaging one.\n\nUser: {}\n\n<response>{}</response>"
               "\n\nConclude with the score using the format: \"Score: <total points>\"")


class Preamble:
    """A prefix that shares no leading token with the sampled text: the whole context is fed."""

    def __init__(self, words: str):
        self.words = words

    def __call__(self, text: str) -> str:
        return f"{self.words}{text}\nScore: "


def requests(budgets=(10, 40, 45), preamble=PREAMBLE, prompt=judge_prompt) -> list[GenerationRequest]:
    prefixes = [ScorePrefix(CASES[0][1]), Preamble("Note. "), Preamble(preamble)]
    out = []
    for i, ((question, response), prefix, budget) in enumerate(zip(CASES, prefixes, budgets, strict=True)):
        out.append(GenerationRequest(
            id=f"r{i}", messages=({"role": "user", "content": prompt(question, response)},),
            sampling=SamplingParams(temperature=0.9, top_p=0.95, max_tokens=budget), n=3, seed=i,
            follow_up=ChoiceFollowUp(prefix, SCORE_CHOICES)))
    out.append(GenerationRequest(id="plain", messages=({"role": "user", "content": "Say hi."},),
                                 sampling=SamplingParams(temperature=0.9, top_p=0.95, max_tokens=12), n=2, seed=7))
    return out


def without_follow_ups(reqs):
    return [GenerationRequest(id=r.id, messages=r.messages, sampling=r.sampling, n=r.n, seed=r.seed) for r in reqs]


@pytest.fixture(scope="module")
def fp32_engine():
    eng = embedded_engine(batch_size=16)
    yield eng
    eng.close()


@pytest.mark.slow
def test_float32_follow_ups_equal_an_independent_forward(fp32_engine, monkeypatch):
    fed = record_feeds(monkeypatch)
    reqs = requests()
    outs = {o.id: o for o in fp32_engine.generate(reqs)}
    assert [s.choice_probs for s in outs["plain"].samples] == [None, None]
    # the last feeds are the follow-ups' (an earlier one feeds the prompts' remainders after their shared
    # root), grouped by width: the few tokens of "\nScore: " apart from the preambles' whole contexts
    follow_feeds = []
    while sum(map(len, follow_feeds)) < 9:
        follow_feeds.insert(0, [len(seq) for seq in fed[len(fed) - 1 - len(follow_feeds)]])
    assert sum(map(len, follow_feeds)) == 9 and len(follow_feeds) >= 2
    assert max(follow_feeds[0]) <= 6 and min(follow_feeds[-1]) > schedule_module.FEED_CHUNK  # both kinds, apart
    for r in reqs[:3]:
        assert len(outs[r.id].samples) == r.n
        for s in outs[r.id].samples:
            want = independent_choice_probs(fp32_engine, r.messages, r.follow_up.prefix(s.text),
                                            SCORE_CHOICES)
            np.testing.assert_allclose(s.choice_probs, want, atol=1e-4)
            assert abs(sum(s.choice_probs) - 1) < 1e-6


@pytest.mark.slow
def test_a_row_whose_whole_text_must_be_fed_gets_a_feed_of_its_own(fp32_engine, monkeypatch):
    """Nine samples need a few tokens fed (a sample whose text re-encodes differently, a few dozen), one
    ~1,000 (its context shares nothing with its text): the short ones are fed together, the long one
    alone (not padding every row to 1,000), and all are exact."""
    fed = record_feeds(monkeypatch)
    reqs = [
        GenerationRequest(id=f"s{i}", messages=r.messages, sampling=r.sampling, n=3, seed=i,
                          follow_up=ChoiceFollowUp(ScorePrefix(CASES[i][1]), SCORE_CHOICES))
        for i, r in enumerate(requests()[:3])]
    reqs.append(GenerationRequest(id="long", messages=reqs[0].messages, sampling=SamplingParams(0.9, 0.95, 12), seed=5,
                                  follow_up=ChoiceFollowUp(Preamble(PREAMBLE * 8), SCORE_CHOICES)))
    outs = {o.id: o for o in fp32_engine.generate(reqs)}
    follow_feeds = []  # the last feeds, the follow-ups' (narrowest first)
    while sum(map(len, follow_feeds)) < 10:
        follow_feeds.insert(0, [len(seq) for seq in fed[len(fed) - 1 - len(follow_feeds)]])
    assert sum(map(len, follow_feeds)) == 10 and follow_feeds[-1][0] > 900 and len(follow_feeds[-1]) == 1
    assert len(follow_feeds[0]) >= 5 and max(follow_feeds[0]) <= 12  # the "\nScore: " rows, fed together
    for r in reqs:
        for s in outs[r.id].samples:
            np.testing.assert_allclose(s.choice_probs, independent_choice_probs(
                fp32_engine, r.messages, r.follow_up.prefix(s.text), SCORE_CHOICES), atol=1e-4)


@pytest.mark.slow
@pytest.mark.kernel
def test_bf16_kernel_path_parks_rows_and_reads_what_choice_probs_reads(fp32_engine, monkeypatch):
    bf16 = bf16_twin(fp32_engine, batch_size=16)
    parked_at_growth = []
    move = cache_module._SharedPrefixLayer._move
    monkeypatch.setattr(cache_module._SharedPrefixLayer, "_move",
                        lambda self, *a: parked_at_growth.append(len(getattr(self.cache, "parked_slots", ()))) or move(self, *a))
    fed, promoted = [], []
    kernel_feed, promote = FusedDecoder.kernel_feed, cache_module.SharedPrefixCache.promote_rows

    def counting_feed(self, cache, tokens, mask, positions):
        fed.append((int(mask.sum()), len(seqs_needing(mask))))
        return kernel_feed(self, cache, tokens, mask, positions)

    monkeypatch.setattr(FusedDecoder, "kernel_feed", counting_feed)
    monkeypatch.setattr(cache_module.SharedPrefixCache, "promote_rows", lambda self: promoted.append(1) or promote(self))
    # the kernels feed a context of any width in one pass (no FEED_CHUNK): the third request's preamble
    # is two sentences and its rows stop at 12 tokens (their whole context is fed either way); the
    # "Note. " rows' 40 tokens still grow the buffers past 32 while the 10-token rows are parked
    reqs = requests(budgets=(10, 40, 12), preamble=PREAMBLE[: len(PREAMBLE) // 6], prompt=SHORT_JUDGE.format)
    outs = {o.id: o for o in bf16.generate(reqs)}
    assert max(parked_at_growth) > 0  # rows finished at 10 tokens were kept through a growth past 32
    assert fed and promoted  # follow-ups fed through kernel_feed; the judge prompts' remainders promoted
    assert {o.id: o.texts for o in bf16.generate(without_follow_ups(reqs))} == {k: o.texts for k, o in outs.items()}
    choice = [ChoiceRequest(id=f"{r.id}/{j}", messages=r.messages, assistant_prefix=r.follow_up.prefix(t),
                            choices=SCORE_CHOICES) for r in reqs[:3] for j, t in enumerate(outs[r.id].texts)]
    reread = {o.id: o.probs for o in bf16.choice_probs(choice)}
    ours = np.array([s.choice_probs for r in reqs[:3] for s in outs[r.id].samples])
    theirs = np.array([reread[c.id] for c in choice])
    truth = np.array([independent_choice_probs(fp32_engine, c.messages, c.assistant_prefix, SCORE_CHOICES) for c in choice])
    assert np.abs(ours - theirs).max() < 0.06
    # as close to float32 as choice_probs' own re-prefill is
    assert np.abs(ours - truth).mean() <= 1.5 * np.abs(theirs - truth).mean() + 2e-3


def seqs_needing(mask):
    """The rows of a feed's mask that have a token to feed."""
    return [row for row in mask.tolist() if any(row)]


def test_chunk_logs_keep_follow_up_probabilities(tmp_path):
    class Answering:
        def generate(self, reqs):
            for r in reqs:
                probs = [0.25, 0.75] if r.follow_up else None
                yield GenerationOutput(r.id, (Completion("a", 1, True, probs),))

    passes = ChunkedPasses(lambda: Answering(), lambda name: tmp_path / f"{name}.jsonl", chunk_size=1)
    reqs = [GenerationRequest(id="x", messages=(), follow_up=ChoiceFollowUp(str, ("A", "B"))),
            GenerationRequest(id="y", messages=())]
    first = passes.generate("meta_judge", reqs)
    again = ChunkedPasses(lambda: pytest.fail("all chunks are logged"), lambda name: tmp_path / f"{name}.jsonl",
                          chunk_size=1).generate("meta_judge", reqs)
    assert first == again
    assert again["x"].samples == (Completion("a", 1, True, [0.25, 0.75]),)
    assert again["y"].samples == (Completion("a", 1, True),)


def split_cost(need, feeds, forward_cost, kernel=False):
    """What ``feed_groups`` minimises, written out per feed (feeds in ascending width, fed in that order)."""
    if kernel:
        waiting, cost = len(need), 0.0
        for f in sorted(feeds, key=lambda f: max(need[i] for i in f)):
            cost += sum(need[i] for i in f) + schedule_module.KERNEL_FEED_COST
            cost += schedule_module.KERNEL_COLUMN_COST * waiting * max(need[i] for i in f)
            waiting -= len(f)
        return cost
    return sum(len(f) * max(need[i] for i in f) + forward_cost * -(-max(need[i] for i in f) // schedule_module.FEED_CHUNK)
               for f in feeds)


def test_feed_groups_exact_partitions():
    assert schedule_module.feed_groups([]) == []
    assert schedule_module.feed_groups([5, 5, 5]) == [[0, 1, 2]]
    # 9 rows of 5 and one of 200: one feed would cost 10 * 200 + 4 * 32 = 2,128 positions; apart
    # 9 * 5 + 32 + 200 + 4 * 32 = 405
    assert schedule_module.feed_groups([5, 200, 5, 5, 5, 5, 5, 5, 5, 5]) == [[0, 2, 3, 4, 5, 6, 7, 8, 9], [1]]
    # widths 4 and 6: joining costs 2 rows * 2 more positions, a second forward 32: together
    assert schedule_module.feed_groups([6, 4, 4]) == [[1, 2, 0]]
    # with a zero fixed cost every distinct width is its own feed
    assert schedule_module.feed_groups([6, 4, 4], forward_cost=0) == [[1, 2], [0]]


def test_feed_groups_through_the_kernels_cost_real_tokens_and_buffer_positions():
    """With ``kernel`` a feed costs its rows' own needs plus ``KERNEL_FEED_COST``, and its width in buffer
    positions (``KERNEL_COLUMN_COST`` each) for every row still waiting: padding is not computed."""
    assert (schedule_module.KERNEL_FEED_COST, schedule_module.KERNEL_COLUMN_COST) == (20, 1 / 64)
    # widths 5 and 40: together 55 + 20 + 4 * 40 / 64 = 77.5; apart 15 + 20 + 4 * 5 / 64 + 40 + 20 + 40 / 64 = 95.9
    assert schedule_module.feed_groups([5, 40, 5, 5], kernel=True) == [[0, 2, 3, 1]]
    # nine rows of 5 and one of 200: together 245 + 20 + 10 * 200 / 64 = 296.25; apart
    # 45 + 20 + 10 * 5 / 64 + 200 + 20 + 200 / 64 = 288.9 (the 200 positions kept off nine rows' buffers)
    assert schedule_module.feed_groups([5, 200, 5, 5, 5, 5, 5, 5, 5, 5], kernel=True) == [[0, 2, 3, 4, 5, 6, 7, 8, 9], [1]]
    assert schedule_module.feed_groups([6, 4], kernel=True) == [[1, 0]]
    assert schedule_module.feed_groups([3, 3], kernel=True) == [[0, 1]]


def test_feed_groups_is_never_costlier_than_any_contiguous_split():
    rng = np.random.default_rng(0)
    for _ in range(200):
        need = [int(x) for x in rng.integers(1, 150, size=int(rng.integers(1, 8)))]
        cost = int(rng.integers(0, 64))
        kernel = bool(rng.integers(0, 2))
        feeds = schedule_module.feed_groups(need, forward_cost=cost, kernel=kernel)
        assert sorted(i for f in feeds for i in f) == list(range(len(need)))
        order = sorted(range(len(need)), key=lambda i: need[i])
        for mask in range(2 ** (len(need) - 1)):  # every split of the sorted rows into contiguous feeds
            cuts = [0] + [k + 1 for k in range(len(need) - 1) if mask >> k & 1] + [len(need)]
            other = [order[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
            assert split_cost(need, feeds, cost, kernel) <= split_cost(need, other, cost, kernel) + 1e-9
