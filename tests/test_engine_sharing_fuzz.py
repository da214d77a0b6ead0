"""Seeded random stress of the hf engine's prefix sharing across requests (``shared_roots``) with
follow-up reads (``ChoiceFollowUp``), on the embedded model in float32 and in bf16 (C++ kernels).

Each case is one to three *families* of requests whose chat messages share one long text (their
rendered prompts share over ``min_shared`` tokens) and end in chosen numbers of filler words, so that
their remainders after the shared root are the bare chat-template tail (6 tokens) or up to
``2 * FEED_CHUNK + 1`` wide, ``k * FEED_CHUNK + d`` (d in -1, 0, 1) among them, very different widths
in one batch; and one lone unrelated request. ``n``, ``max_tokens``, temperature (greedy included),
top-p and follow-ups are random; every third case has a ``batch_size`` of 2-8, so that the requests
are cut into several batches (and families split). The reference is the same engine with sharing off
*inside each batch* (``shared_roots`` answering "every prompt its own whole root"): the batches, their
row order and so the sampler's draws stay the same. (``min_shared = 10**9`` would also reorder the
requests, and a batch's seed and per-row draws depend on that order.)

* float32: no exception; each output has ``n`` texts and token counts and, with a follow-up, ``n``
  entries, each None or a distribution over the choices; every sample's sampled distributions are
  those without sharing (1e-4) and so are its tokens, up to a draw that lands within rounding of the
  boundary between two tokens (the sample's later steps are then not compared); the follow-up
  probabilities equal those without sharing (same tokens) or an independent forward over prompt plus
  choice context (``hf_trace.independent_choice_probs``; also for a few other samples);
* bf16: the same shape checks; the texts equal those drawn without follow-ups (the kernels' path parks
  finished rows instead of carrying them); every row's first sampled distribution is the one without
  sharing up to bf16 rounding (0.06: both are bf16; ``record_steps`` on the requests without
  follow-ups); a few follow-up probabilities are close to ``choice_probs``' own re-prefill of the
  same text.

A case is a function of its seed: ``fuzz_case(engine, seed)`` rebuilds any failing one.

The last two tests are minimal reproductions of what the stress found: a rows-phase forward whose
queries are one position wide, on the torch attention path (float32; bf16 without the C++ kernels),
gives NaN for a row whose continuation positions written so far are all padding (``rows_attention``
takes a one-query call for a decoding step, in which every query sees its own key, and calls
``_softmax_parts(..., maybe_empty=False)``). A remainder feed of width ``k * FEED_CHUNK + 1`` starts
with such a forward; a shorter remainder is all padding in it. Fixed in ``rows_attention`` (a padded
one-position call now guards for rows with every key masked); the C++ kernel's side of the same shape
was fixed before it.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from hf_trace import bf16_twin, embedded_engine, independent_choice_probs, record_steps

from metareward.engines.base import ChoiceFollowUp, ChoiceRequest, GenerationRequest, SamplingParams
from metareward.engines.hf import HFEngine
from metareward.engines.hf import engine as engine_module
from metareward.engines.hf.schedule import FEED_CHUNK, shared_roots
from metareward.engines.tokens import common_prefix
from metareward.stages.meta_judge import VERDICT_CHOICES, verdict_prefix

TOPICS = [
    "Read the passage below about the old river trade between the valley towns, then answer the question after it.",
    "You are grading a short essay on the causes of the first industrial revolution; be strict but fair in every remark.",
    "Compare the two recipes for bread that follow and say which one a beginner should bake first, and explain why.",
    "The following log comes from a failing nightly build of a large compiler project; find the most likely cause.",
]
FILLERS = [" apple", " river", " stone", " cloud", " green", " table", " seven", " paper"]  # one token each
LONE = ({"role": "user", "content": "Name a colour."},)
BOUNDARIES = [k * FEED_CHUNK + d for k in (1, 2) for d in (1, 0, -1)]  # case seed % 6 puts its first family on one
FP32_CASES = 3  # seeds 0..2
# bf16 (each case costs several float32 ones on a CPU without bf16 matmuls): seed 3 puts remainders one
# past, at and one short of two feed chunks (129, 128, 127) in one batch; seed 5 cuts the requests into
# batches of 6 (families split) with six follow-ups. Seeds 4 (128, 127, 64) and 6 (65: one past a chunk,
# as test_engine_prefix_tree's bf16 regression test) add no width or path these two do not cover.
BF16_SEEDS = (3, 5)


def no_sharing(prompts, min_shared):
    """``shared_roots`` with sharing off: every prompt its own whole root (the batches stay as they were)."""
    return shared_roots(prompts, 10**9)


def message(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def tail_tokens(engine: HFEngine, text: str) -> int:
    """Tokens of the rendered prompt after ``text`` (the chat template's end of turn and assistant header)."""
    whole = engine.render(message(text))
    return len(whole) - common_prefix(whole, engine.render(message(text + FILLERS[0])))


def remainder_widths(rng: random.Random) -> list[int]:
    """A family's remainder widths: one at a feed-chunk boundary (k * FEED_CHUNK + d), and 1-2 more,
    anything from the bare chat-template tail (0 filler words) to another boundary."""
    widths = [rng.choice(BOUNDARIES)]
    for _ in range(rng.randint(1, 2)):
        widths.append(rng.choice([0, rng.randint(1, 8), rng.randint(9, 2 * FEED_CHUNK + 1), rng.choice(BOUNDARIES)]))
    rng.shuffle(widths)
    return widths


def request(rng: random.Random, name: str, messages) -> GenerationRequest:
    sampling = SamplingParams(temperature=rng.choice([0.0, 0.7, 1.0, 1.0]), top_p=rng.choice([0.9, 1.0]),
                              max_tokens=rng.randint(1, 12))
    follow_up = ChoiceFollowUp(verdict_prefix, VERDICT_CHOICES) if rng.random() < 0.6 else None
    return GenerationRequest(id=name, messages=messages, sampling=sampling, n=rng.randint(1, 3),
                             seed=rng.randrange(1000), follow_up=follow_up)


def fuzz_case(engine: HFEngine, seed: int) -> tuple[list[GenerationRequest], int, list[int]]:
    """(requests, engine batch size, each family member's remainder width when one batch holds its
    whole family, in family then member order) for case ``seed``. The first family has a member of
    width ``BOUNDARIES[seed % 6]`` and one of the bare chat-template tail after the shared text (the
    narrowest: all padding in the feed's first chunks); every third case cuts the requests into batches
    of at most 2-8 sequences. Member ``j`` of family ``f`` is request ``f{f}m{j}``."""
    rng = random.Random(seed)
    topics = rng.sample(TOPICS, rng.choice([1, 2, 2, 3]))
    reqs: list[GenerationRequest] = []
    widths: list[int] = []
    for f, topic in enumerate(topics):
        common = f"{topic} {topic}"  # ~45 tokens: with the system prompt, > 64 shared
        tail = tail_tokens(engine, common)
        planned = [BOUNDARIES[seed % 6], 0, *rng.sample(remainder_widths(rng), 1)] if f == 0 else remainder_widths(rng)
        for j, width in enumerate(planned):
            words = max(width - tail, 0)
            widths.append(tail + words)
            reqs.append(request(rng, f"f{f}m{j}", message(common + FILLERS[j % len(FILLERS)] * words)))
    reqs.append(request(rng, "lone", LONE))
    rng.shuffle(reqs)
    return reqs, rng.randint(2, 8) if seed % 3 == 2 else 64, widths


def check_shapes(reqs: list[GenerationRequest], outs: dict) -> None:
    """Every request answered once, with n samples, each with a token count within its budget and (a
    follow-up) choice probabilities None or a probability distribution over the choices."""
    assert sorted(outs) == sorted(r.id for r in reqs)
    for r in reqs:
        samples = outs[r.id].samples
        assert len(samples) == r.n, r.id
        assert all(1 <= s.n_tokens <= r.sampling.max_tokens for s in samples), (r.id, samples)
        for s in samples:
            probs = s.choice_probs
            assert probs is None or r.follow_up is not None, r.id
            if probs is not None:
                assert len(probs) == len(VERDICT_CHOICES) and min(probs) >= 0, (r.id, probs)
                assert abs(sum(probs) - 1) < 1e-5, (r.id, probs)


def read_samples(reqs, outs, count: int) -> list[tuple[str, int]]:
    """Up to ``count`` (request id, sample index) whose follow-up was read, spread over the requests."""
    found = [(r.id, k) for r in reqs for k, s in enumerate(outs[r.id].samples) if s.choice_probs is not None]
    return found[:: max(1, len(found) // count)][:count]


def per_sample(outs, steps) -> dict[tuple[str, int], list[tuple[int, torch.Tensor]]]:
    """``record_steps``' trace by sample: (request id, sample index) -> [(token, log-softmax)] per step."""
    seen: dict[tuple[str, int], list] = {}
    it = iter(outs)
    for batch in steps:
        rows = []  # batch row -> sample, in batch-row order (requests in batch order, then samples)
        while len(rows) < len(batch[0][0]):  # every row samples a first token
            out = next(it)
            rows += [(out.id, k) for k in range(len(out.samples))]
        for alive, tokens, logprobs in batch:
            for b, (row, token) in enumerate(zip(alive, tokens, strict=True)):
                seen.setdefault(rows[row], []).append((token, logprobs[b]))
    assert next(it, None) is None
    return seen


@pytest.fixture(scope="module")
def fp32():
    eng = embedded_engine(batch_size=64)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def bf16(fp32):
    eng = bf16_twin(fp32, batch_size=64)
    yield eng
    eng.close()


def test_cases_put_remainders_on_feed_chunk_boundaries(fp32):
    """The generator does what the stress relies on: every family's members share a root of at least
    ``min_shared`` tokens and their remainders have the planned widths, those at and next to a feed
    chunk's boundary among them, next to the bare template tail."""
    seen = set()
    for seed in (*range(FP32_CASES), *BF16_SEEDS):
        reqs, _, widths = fuzz_case(fp32, seed)
        family = sorted((r for r in reqs if r.id != "lone"), key=lambda r: tuple(map(int, r.id[1:].split("m"))))
        prompts = [fp32.render(r.messages) for r in family]
        root_of, cut = shared_roots(prompts, fp32.min_shared)
        assert len(set(root_of)) < len(family)  # shared, as one batch
        for i, (p, c) in enumerate(zip(prompts, cut, strict=True)):
            if root_of.count(root_of[i]) > 1:
                assert c >= fp32.min_shared and len(p) - c == widths[i], (seed, family[i].id)
        seen.update(w % FEED_CHUNK for w in widths)
        assert min(widths) < 8 < FEED_CHUNK < max(widths), seed
    assert {0, 1, FEED_CHUNK - 1} <= seen


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FP32_CASES))
def test_float32_sharing_changes_no_distribution_text_or_follow_up(fp32, seed, monkeypatch):
    reqs, batch_size, _ = fuzz_case(fp32, seed)
    monkeypatch.setattr(fp32, "batch_size", batch_size)
    outs, steps = record_steps(fp32, reqs)  # float32 carries finished rows: no row leaves before follow-ups
    by_id = {o.id: o for o in outs}
    check_shapes(reqs, by_id)
    with monkeypatch.context() as m:
        m.setattr(engine_module, "shared_roots", no_sharing)
        alone, alone_steps = record_steps(fp32, reqs)
    alone_by_id = {o.id: o for o in alone}
    ours, theirs = per_sample(outs, steps), per_sample(alone, alone_steps)
    assert ours.keys() == theirs.keys()
    diverged = set()
    for sample, seen in ours.items():
        for s, ((token, logprobs), (other, reference)) in enumerate(zip(seen, theirs[sample])):
            assert (logprobs.exp() - reference.exp()).abs().max() < 1e-4, (sample, s)
            if token != other:  # one uniform, two distributions 1e-4 apart: it fell on a token boundary
                diverged.add(sample)
                break
    assert len(diverged) <= 2, diverged  # rare: a draw within rounding of a boundary
    check = set(read_samples(reqs, by_id, 3))
    for r in reqs:
        for k in range(r.n):
            if (r.id, k) in diverged:
                check.add((r.id, k))
                continue
            ours_s, theirs_s = by_id[r.id].samples[k], alone_by_id[r.id].samples[k]
            assert ours_s.text == theirs_s.text, (r.id, k)
            assert (ours_s.choice_probs is None) == (theirs_s.choice_probs is None), (r.id, k)
            if ours_s.choice_probs is not None:
                np.testing.assert_allclose(ours_s.choice_probs, theirs_s.choice_probs, atol=1e-4,
                                           err_msg=f"{r.id}/{k}")
    requests = {r.id: r for r in reqs}
    for rid, k in sorted(check):
        sample = by_id[rid].samples[k]
        if sample.choice_probs is not None:
            want = independent_choice_probs(fp32, requests[rid].messages, verdict_prefix(sample.text),
                                            VERDICT_CHOICES)
            np.testing.assert_allclose(sample.choice_probs, want, atol=1e-4, err_msg=f"{rid}/{k}")


@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.parametrize("seed", BF16_SEEDS)
def test_bf16_kernel_path_sharing_keeps_first_distributions(bf16, seed, monkeypatch):
    reqs, batch_size, _ = fuzz_case(bf16, seed)
    monkeypatch.setattr(bf16, "batch_size", batch_size)
    outs = {o.id: o for o in bf16.generate(reqs)}
    check_shapes(reqs, outs)
    plain = [dataclasses.replace(r, follow_up=None) for r in reqs]
    plain_outs, steps = record_steps(bf16, plain)
    assert {o.id: o.texts for o in plain_outs} == {k: o.texts for k, o in outs.items()}  # parked, not carried
    # only the first step is compared: sharing off, one token each (a batch's draws and rows do not
    # depend on max_tokens, and its first distributions are the prefill's)
    first = [dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, max_tokens=1)) for r in plain]
    with monkeypatch.context() as m:
        m.setattr(engine_module, "shared_roots", no_sharing)
        _, alone = record_steps(bf16, first)
    assert len(steps) == len(alone)
    for batch, (ours, theirs) in enumerate(zip(steps, alone, strict=True)):
        assert ours[0][0] == theirs[0][0], batch  # every row samples a first token, in the same order
        # each bf16 path is up to ~0.03 off float32 here, in either direction (seed 3: 0.011 shared, 0.033
        # not; transformers' own bf16 forward 0.013), so the two may be ~0.045 apart
        assert (ours[0][2].exp() - theirs[0][2].exp()).abs().max() < 0.06, batch
    samples = read_samples(reqs, outs, 3)
    messages = {r.id: r.messages for r in reqs}
    reread = {o.id: o.probs for o in bf16.choice_probs([
        ChoiceRequest(id=f"{rid}/{k}", messages=messages[rid],
                      assistant_prefix=verdict_prefix(outs[rid].samples[k].text),
                      choices=VERDICT_CHOICES) for rid, k in samples])}  # yielded in its own order
    for rid, k in samples:
        ours = np.array(outs[rid].samples[k].choice_probs)
        assert np.abs(ours - np.array(reread[f"{rid}/{k}"])).max() < 0.06, (rid, k)


# ---------------------------------------------------------------- minimal reproductions of what it found


@pytest.mark.slow
def test_float32_remainder_feed_one_past_a_chunk_with_a_short_remainder(fp32, monkeypatch):
    """Two requests on one root, remainders 6 (the template's tail) and FEED_CHUNK + 1 tokens, one
    greedy token each. The feed's first forward is one position wide and the short row is all padding
    in it; before a fix the torch attention gives that row NaN (every key masked), which its later
    positions read, and the C++ sampler raises "sample_next: the logits of row 0 hold a NaN or an
    infinity" (torch's sampler, with decode_kernel=False, draws from them silently). Widths 6 and
    FEED_CHUNK or FEED_CHUNK + 2 run fine."""
    common = f"{TOPICS[0]} {TOPICS[0]}"
    words = FEED_CHUNK + 1 - tail_tokens(fp32, common)
    reqs = [GenerationRequest(id=name, messages=message(text), sampling=SamplingParams(0.0, 1.0, 1))
            for name, text in [("short", common), ("long", common + FILLERS[0] * words)]]
    root_of, cut = shared_roots([fp32.render(r.messages) for r in reqs], fp32.min_shared)
    assert root_of[0] == root_of[1] and [len(fp32.render(r.messages)) - c for r, c in zip(reqs, cut)] == [6, 65]
    outs = {o.id: o.texts for o in fp32.generate(reqs)}
    monkeypatch.setattr(engine_module, "shared_roots", no_sharing)
    assert outs == {o.id: o.texts for o in fp32.generate(reqs)}


@pytest.mark.slow
def test_float32_choice_probs_with_a_context_one_past_a_chunk_and_a_short_one(fp32):
    """The same attention on ``choice_probs``' own feed: two assistant prefixes on one prompt whose
    contexts are 6 and FEED_CHUNK + 1 tokens. Before a fix the short one's probabilities are NaN,
    silently (the constrained scoring pass hands them on)."""
    messages = message("Which is better, A or B?")
    prefixes = ["A is fine. Answer: ", "apple" + " apple" * 61 + ". Answer: "]
    assert [len(fp32.choice_context(p, VERDICT_CHOICES)[0]) for p in prefixes] == [6, FEED_CHUNK + 1]
    got = {o.id: o.probs for o in fp32.choice_probs([
        ChoiceRequest(id=str(i), messages=messages, assistant_prefix=p, choices=VERDICT_CHOICES)
        for i, p in enumerate(prefixes)])}
    for i, p in enumerate(prefixes):
        np.testing.assert_allclose(got[str(i)], independent_choice_probs(fp32, messages, p, VERDICT_CHOICES), atol=1e-4)
