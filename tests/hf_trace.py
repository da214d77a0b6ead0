"""Test helper: what the hf engine's decoding loop did at every step, observed from outside the loop.

The engine has no trace of its own on its hot path. ``record_steps`` wraps three seams for the length
of one ``generate`` call: ``HFEngine._generate_batch`` (a batch starts: its rows are 0..R-1),
``HFEngine._sample`` (one decoding step: the log-softmax of the logits it is handed, and the tokens it
returns) and ``SharedPrefixCache.select_rows`` (rows leave the batch: which original rows the batch
rows are from now on). A row is live at step ``s`` of its batch while ``s`` is below its token count
(``Completion.n_tokens``; the stop token is counted), so a finished row still carried in the
batch is left out, as the loop leaves out its tokens. A selection before the first step (prefix sharing
across requests copies each request's row to its samples) does not renumber the rows.
"""

from __future__ import annotations

from unittest import mock

import torch

from metareward.engines.hf.cache import SharedPrefixCache


def record_steps(engine, reqs) -> tuple[list, list[list[tuple[list[int], list[int], torch.Tensor]]]]:
    """Run ``engine.generate(reqs)``; return (its outputs, per batch a list of steps). A step is
    (live original rows of the batch, their sampled tokens, their log-softmax [rows, vocab] float32),
    rows numbered from 0 in each batch, in the engine's batch-row order."""
    batches: list[dict] = []
    generate_batch, sample, select_rows = engine._generate_batch, engine._sample, SharedPrefixCache.select_rows

    def on_batch(batch_reqs, prompts):
        state = {"alive": None, "raw": [], "outputs": []}
        batches.append(state)
        for out in generate_batch(batch_reqs, prompts):
            state["outputs"].append(out)
            yield out

    def on_sample(logits, *args):
        state = batches[-1]
        if state["alive"] is None:
            state["alive"] = list(range(len(logits)))
        logprobs = torch.log_softmax(logits.float(), -1)  # before the sampler may overwrite the logits
        tokens = sample(logits, *args)
        state["raw"].append((list(state["alive"]), tokens.tolist(), logprobs))
        return tokens

    def on_select(cache, rows, lazy=False, park=False):
        state = batches[-1]
        # before the first step: requests' rows copied to their samples; after decoding, the follow-ups'
        # unparking makes other rows the batch's (the cache then no longer holds the decoding rows)
        if state["alive"] is not None and len(state["alive"]) == len(cache.owner):
            state["alive"] = [state["alive"][i] for i in rows.tolist()]
        return select_rows(cache, rows, lazy, park)

    with mock.patch.object(engine, "_generate_batch", on_batch), mock.patch.object(engine, "_sample", on_sample), \
            mock.patch.object(SharedPrefixCache, "select_rows", on_select):
        outputs = list(engine.generate(reqs))
    steps = []
    for state in batches:
        counts = [s.n_tokens for out in state["outputs"] for s in out.samples]  # batch-row order
        batch_steps = []
        for s, (alive, tokens, logprobs) in enumerate(state["raw"]):
            live = [b for b, row in enumerate(alive) if s < counts[row]]
            batch_steps.append(([alive[b] for b in live], [tokens[b] for b in live], logprobs[live]))
        steps.append(batch_steps)
    return outputs, steps


def record_feeds(monkeypatch) -> list[list[list[int]]]:
    """For the rest of the test, the token sequences of every ``HFEngine._feed`` call (prompt remainders
    after their shared root, follow-up contexts), one list per call."""
    from metareward.engines.hf import engine as engine_module

    feeds: list[list[list[int]]] = []
    feed = engine_module.HFEngine._feed
    monkeypatch.setattr(engine_module.HFEngine, "_feed",
                        lambda self, cache, seqs, start: feeds.append(list(seqs)) or feed(self, cache, seqs, start))
    return feeds


def independent_choice_probs(engine, messages, prefix: str, choices) -> list[float]:
    """The choices' probabilities after ``prefix`` from one plain forward of ``engine.model`` over the
    rendered prompt plus ``choice_context(prefix)``, renormalised (what the engine's reads must equal)."""
    context, ids = engine.choice_context(prefix, choices)
    seq = torch.tensor([engine.render(messages) + context])
    with torch.inference_mode():
        p = torch.softmax(engine.model(input_ids=seq).logits[0, -1].float(), -1)[ids]
    return (p / p.sum()).tolist()


def embedded_engine(batch_size: int):
    """The embedded model on the hf engine in float32 on the CPU (the exact reference path)."""
    from metareward.engines.hf import HFEngine
    from metareward.models import resolve_model

    return HFEngine(resolve_model("smollm2-135m"), device="cpu", dtype="float32", batch_size=batch_size)


def bf16_twin(engine, batch_size: int):
    """A bf16 copy of ``engine``'s model on an engine that runs the C++ decoding kernels; the test is
    skipped where the extension does not build."""
    import copy

    import pytest

    from metareward.engines.hf import HFEngine
    from metareward.engines.hf.kernels import load_decode_kernel

    if load_decode_kernel() is None:
        pytest.skip("the C++ decoding extension does not build here")
    twin = HFEngine("", device="cpu", model=copy.deepcopy(engine.model).to(torch.bfloat16), tokenizer=engine.tokenizer,
                    batch_size=batch_size)
    assert twin._decode_kernel is not None
    return twin
