"""Prefix sharing across requests in the hf engine (``shared_roots``, ``sharing_order``).

Requests whose prompts share a long prefix (the meta-judge's battles of one response, the judge prompts
of one question) are batched together, the shared root is prefilled once and each request's remainder
runs against it. Unit tests give the grouping exact expected values and properties; on the real model,
every decoding step's distribution equals an independent forward over that sample's prompt and tokens
(so remainders, their left padding, their copies to the samples and the positions are right), and the
follow-up reads stay exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hf_trace import bf16_twin, embedded_engine, independent_choice_probs, record_feeds, record_steps
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.engines.base import ChoiceFollowUp, GenerationRequest, SamplingParams
from metareward.engines.hf.schedule import shared_roots, sharing_order
from metareward.engines.tokens import common_prefix
from metareward.stages.meta_judge import VERDICT_CHOICES, verdict_prefix
from metareward.templates import meta_judge_prompt


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_shared_roots_groups_prompts_with_a_long_common_prefix():
    base = list(range(100))
    prompts = [base + [7, 8], [999] * 50, base + [9], base[:80] + [1, 2, 3]]
    root_of, cut = shared_roots(prompts, min_shared=64)
    assert root_of == [3, 1, 3, 3] and cut == [80, 50, 80, 80]  # group root: its lexically first member
    # the root never swallows a whole member: a prompt that is a prefix of another keeps one token
    root_of, cut = shared_roots([base, base + [1, 2]], min_shared=64)
    assert cut == [99, 99] and root_of[0] == root_of[1]


def test_shared_roots_declines_sharing_that_does_not_pay():
    shared = list(range(65))
    # one root of 65 + two remainders padded to 1000 = 2065 positions, against 2 x 1065 whole: shared
    assert shared_roots([shared + [1] * 1000, shared + [2] * 1000], 64) == ([0, 0], [65, 65])
    # with a lone 1065-token prompt the roots are padded to its width: 2 x 1065 + 2 x 1000 > 3 x 1065
    prompts = [shared + [1] * 1000, shared + [2] * 1000, [500] * 1065]
    assert shared_roots(prompts, 64) == ([0, 1, 2], [1065, 1065, 1065])
    assert shared_roots([shared + [1], shared + [2]], 200) == ([0, 1], [66, 66])  # below min_shared


def test_shared_roots_cuts_at_the_depth_that_computes_least():
    """The meta-judge's shape: every battle shares the rubric (100 tokens), those of one response also
    its question and response (200 more), and each has its own 20 tokens of judgments. Rooted at the
    rubric: 1 x 100 + 12 x 220 = 2,740 positions; rooted at each response: 2 x 300 + 12 x 20 = 840."""
    rubric = [0] * 100
    responses = [[1] * 200, [2] * 200]
    prompts = [rubric + responses[r] + [3 + b] * 20 for r in range(2) for b in range(6)]
    root_of, cut = shared_roots(prompts, min_shared=64)
    assert cut == [300] * 12 and root_of == [0] * 6 + [6] * 6
    # with short responses the rubric is the better root: 1 x 100 + 12 x 25 = 400 < 2 x 105 + 12 x 20 = 450
    prompts = [rubric + [1 + r] * 5 + [3 + b] * 20 for r in range(2) for b in range(6)]
    assert shared_roots(prompts, min_shared=64) == ([0] * 12, [100] * 12)


def test_sharing_order_keeps_families_together_shortest_first():
    fam = list(range(70))
    prompts = [[9] * 10, fam + [5, 5, 5], [8] * 3, fam + [1], fam + [4, 4]]
    assert sharing_order(prompts, 64) == [2, 0, 3, 4, 1]
    assert sharing_order(prompts, 10**6) == [2, 0, 3, 4, 1][:2] + [3, 4, 1]  # lone prompts by length too


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=12),
       st.integers(1, 6))
def test_shared_roots_properties(prompts, min_shared):
    root_of, cut = shared_roots(prompts, min_shared)
    assert sorted(sharing_order(prompts, min_shared)) == list(range(len(prompts)))
    for i, p in enumerate(prompts):
        g = root_of[i]
        assert prompts[g][: cut[g]] == p[: cut[i]] and cut[i] == cut[g]  # members start with their root
        if g == i and root_of.count(i) == 1:
            assert cut[i] == len(p)  # a lone prompt is its own whole root
        else:
            assert min_shared <= cut[i] < len(p)  # a member keeps at least one token of its own


JUDGMENTS = ["The response is correct and concise. Score: 4", "It answers but lacks detail.\nScore: 3",
             "Wrong answer entirely. Score: 1"]


def battles(follow_up: bool) -> list[GenerationRequest]:
    """Three of the meta-judge's battles of one response (each pair of judgments once; n=2 samples each,
    to exercise the copies), and one unrelated request in the same batch (the last)."""
    reqs = [GenerationRequest(
        id=f"{a}-{b}", messages=({"role": "user", "content": meta_judge_prompt("What is 2+2?", "4", JUDGMENTS[a],
                                                                               JUDGMENTS[b])},),
        sampling=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=12 + 3 * a + b), n=2, seed=3 * a + b,
        follow_up=ChoiceFollowUp(verdict_prefix, VERDICT_CHOICES) if follow_up else None)
        for a in range(3) for b in range(3) if a < b]
    reqs.append(GenerationRequest(id="lone", messages=({"role": "user", "content": "Name a colour."},),
                                  sampling=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8), n=2, seed=99))
    return reqs


@pytest.fixture(scope="module")
def engine():
    eng = embedded_engine(batch_size=64)
    yield eng
    eng.close()


@pytest.mark.slow
def test_shared_roots_decode_each_samples_true_distribution(engine, monkeypatch):
    fed = record_feeds(monkeypatch)
    reqs = battles(follow_up=False)
    outs, (steps,) = record_steps(engine, reqs)
    prompts = [engine.render(r.messages) for r in reqs]
    assert len(fed) == 1 and max(len(s) for s in fed[0]) < 200 < min(len(p) for p in prompts[:-1])  # shared
    order = sharing_order(prompts, engine.min_shared)
    rows = [prompts[i] for i in order for _ in range(reqs[i].n)]  # batch-row order
    per_row: dict[int, list] = {}
    for alive, tokens, logprobs in steps:
        for b, (row, token) in enumerate(zip(alive, tokens)):
            per_row.setdefault(row, []).append((token, logprobs[b]))
    assert sorted(per_row) == list(range(len(rows)))
    for row, seen in per_row.items():
        ids = torch.tensor([rows[row] + [t for t, _ in seen]])
        with torch.inference_mode():
            want = torch.log_softmax(engine.model(input_ids=ids).logits[0, len(rows[row]) - 1 : -1].float(), -1)
        got = torch.stack([lp for _, lp in seen])
        assert (got.exp() - want.exp()).abs().max() < 1e-4, row
    # the same requests give the same texts (what resuming relies on); without sharing the distributions
    # are equal only within float rounding (above), so a draw near a tie may differ
    assert {o.id: o.texts for o in engine.generate(reqs)} == {o.id: o.texts for o in outs}


@pytest.mark.slow
def test_shared_roots_follow_ups_equal_an_independent_forward(engine):
    reqs = battles(follow_up=True)
    outs = {o.id: o for o in engine.generate(reqs)}
    assert all(s.choice_probs is None for s in outs["lone"].samples)
    for r in reqs[:-1]:
        for s in outs[r.id].samples:
            np.testing.assert_allclose(s.choice_probs, independent_choice_probs(
                engine, r.messages, verdict_prefix(s.text), VERDICT_CHOICES), atol=1e-4)


def remainders_one_apart_from_a_feed_chunk(engine) -> list[GenerationRequest]:
    """Two requests on one shared root whose remainders are a few tokens and 1 + k * FEED_CHUNK tokens:
    the remainder feed's first forward is one position wide, where the short remainder is all padding
    (a row with no real continuation position yet, attending to its root alone)."""
    from metareward.engines.hf.schedule import FEED_CHUNK

    question = "Summarise the rules of chess for a beginner in plain words. " * 6  # a root over min_shared
    short = [{"role": "user", "content": question}]
    for words in range(1, 200):  # one token a word: the first fit is 1 + FEED_CHUNK
        long = [{"role": "user", "content": question + "Also mention" + " apple" * words}]
        root_of, cut = shared_roots([engine.render(short), engine.render(long)], engine.min_shared)
        width = max(len(p) - c for p, c in zip([engine.render(short), engine.render(long)], cut, strict=True))
        if root_of[0] == root_of[1] and width % FEED_CHUNK == 1 and width > FEED_CHUNK:
            break
    else:
        pytest.fail("no remainder width of the form 1 + k * FEED_CHUNK found")
    return [GenerationRequest(id=name, messages=tuple(m), sampling=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=6),
                              n=2, seed=i, follow_up=ChoiceFollowUp(verdict_prefix, VERDICT_CHOICES))
            for i, (name, m) in enumerate([("short", short), ("long", long)])]


@pytest.mark.slow
@pytest.mark.kernel
def test_bf16_kernel_path_feeds_a_remainder_that_is_all_padding_at_first(engine, monkeypatch):
    """Regression: the decoding kernel refused a row whose written continuation positions were all
    padding (its remainder not begun), which a one-position feed step gives (found in a 3-iteration
    run's meta-judge). Such a row attends to its root alone; its first sampled distribution is the same
    as with no sharing (bf16 both ways, up to bf16 rounding)."""
    bf16 = bf16_twin(engine, batch_size=16)
    reqs = remainders_one_apart_from_a_feed_chunk(bf16)
    fed = record_feeds(monkeypatch)
    outs = list(bf16.generate(reqs))
    assert len(fed[0]) == 2 and len(fed[0][0]) < len(fed[0][1])  # shared: both remainders fed
    assert all(s.choice_probs is not None for o in outs for s in o.samples)
    plain = [dataclasses.replace(r, follow_up=None) for r in reqs]
    _, (steps,) = record_steps(bf16, plain)
    monkeypatch.setattr(bf16, "min_shared", 10**9)
    _, (alone,) = record_steps(bf16, plain)
    assert (steps[0][2].exp() - alone[0][2].exp()).abs().max() < 0.03
