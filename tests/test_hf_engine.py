"""The transformers engine's own decoding loop against plain transformers, on the real embedded model.

* greedy decoding gives exactly the tokens of ``model.generate`` (one prompt at a time, no padding);
* shared-prefix sampling uses, at every step of every sample, the same next-token distribution as an
  independent forward over that sample's prompt + tokens (so the prompt's keys, shared rather than
  copied, are attended correctly, and dropping finished rows keeps rows and prompts aligned);
* the sampler draws from exactly transformers' temperature + top-p distribution (chi-square);
* ``choice_probs`` with a shared prompt equals one independent forward per request;
* the same requests give the same texts; bf16 stays close to float32.
"""

from __future__ import annotations

import platform
import warnings

import numpy as np
import pytest
import torch
from hf_trace import record_steps
from scipy.stats import chisquare

from metareward.engines.base import ChoiceRequest, Completion, GenerationRequest, SamplingParams
from metareward.engines.hf import CompileFallbackWarning, HFEngine
from metareward.engines.hf import attention as attention_module
from metareward.engines.hf import cache as cache_module
from metareward.engines.hf import rows as rows_module
from metareward.engines.hf import sampling as sampling_module
from metareward.engines.hf.kernels import kernel_attention, load_decode_kernel
from metareward.engines.hf.sampling import batch_seed, sample_next

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is 2+2?",
    "Write a haiku about autumn leaves.",
    "Explain in one sentence why the sky is blue, and mention Rayleigh scattering by name.",
]


@pytest.fixture(scope="module")
def engine():
    from metareward.models import resolve_model

    torch.manual_seed(0)
    eng = HFEngine(resolve_model("smollm2-135m"), device="cpu", dtype="float32", batch_size=8)
    yield eng
    eng.close()


def user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def reference_generate(engine: HFEngine, messages, max_tokens: int) -> list[int]:
    ids = torch.tensor([engine.render(messages)])
    out = engine.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
        eos_token_id=engine.stop_ids, pad_token_id=engine.tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def test_greedy_equals_model_generate(engine):
    greedy = SamplingParams(temperature=0, max_tokens=12)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=greedy, n=1 + (i == 2)) for i, q in enumerate(QUESTIONS)]
    outs = {o.id: o for o in engine.generate(reqs)}
    assert sorted(outs) == ["0", "1", "2"]
    for r in reqs:
        ref = reference_generate(engine, r.messages, 12)
        toks, done = engine.cut_at_stop(ref)
        text = engine.tokenizer.decode(toks, skip_special_tokens=True).strip()
        assert outs[r.id].samples == (Completion(text, len(toks) + int(done), done),) * r.n


@pytest.mark.parametrize("compact_at", [1e-9, 0.25, 2.0])  # drop a row at once, in bulk, never
def test_shared_prefix_uses_each_samples_true_distribution(engine, monkeypatch, compact_at):
    """Every step's log-softmax equals an independent unpadded forward of prompt + sampled tokens,
    however long finished rows are carried in the batch before they are dropped. Row buffers grow every
    2 positions here, so growth, the masked unwritten tail and row selection all happen mid-sample."""
    monkeypatch.setattr(rows_module, "COMPACT_AT", compact_at)
    monkeypatch.setattr(cache_module, "SUFFIX_BLOCK", 2)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=6)
    reqs = [
        GenerationRequest(id="long", messages=user(QUESTIONS[2]), sampling=sampling, n=4, seed=3),
        GenerationRequest(id="short", messages=user(QUESTIONS[0]), sampling=SamplingParams(1.0, 1.0, 3), n=3, seed=4),
    ]
    outputs, (trace,) = record_steps(engine, reqs)
    outs = {o.id: o for o in outputs}
    prompts = {r.id: engine.render(r.messages) for r in reqs}
    # rows are ordered by prompt length (bucketing): short's 3 samples, then long's 4
    row_prompt = ["short"] * 3 + ["long"] * 4
    steps: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for rows, sampled, logprobs in trace:
        for b, (row, tok) in enumerate(zip(rows, sampled)):
            steps.setdefault(row, []).append((tok, logprobs[b]))
    assert sum(len(v) for v in steps.values()) == sum(o.generated_tokens for o in outs.values())
    tokens = {row: [tok for tok, _ in v] for row, v in steps.items()}
    for row, v in steps.items():  # one independent, unpadded forward per sample (teacher forcing)
        prompt = prompts[row_prompt[row]]
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([prompt + tokens[row]])).logits[0].float()
        ref = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(v)], -1)
        got = torch.stack([lp for _, lp in v])
        assert torch.allclose(got, ref, atol=2e-4), (row, (got - ref).abs().max())
    assert len({tuple(t) for t in tokens.values()}) > 1  # the samples differ: they are not one copy
    assert all(s.n_tokens <= 3 for s in outs["short"].samples)  # rows end apart
    assert max(s.n_tokens for s in outs["long"].samples) > 3


def exact_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """transformers' own warpers applied to one row: the distribution ``sample_next`` must follow."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())
    scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)[0]


def ranked_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The same nucleus with ties ranked by column (what the C++ sampler does): columns sorted by
    probability, lower column first among equals, kept while the mass ranked above is < top_p."""
    p = torch.softmax(logits.double() / temperature, -1)
    sp, si = p.sort(descending=True, stable=True)
    keep = (sp.cumsum(0) - sp) < top_p
    keep[0] = True
    out = torch.zeros_like(p)
    out[si[keep]] = sp[keep] / sp[keep].sum()
    return out.float()


@pytest.mark.parametrize("path", ["default", "second-tier", "full-sort", "kernel"])
def test_sampler_matches_transformers_warpers(engine, monkeypatch, path):
    """The draws follow transformers' warpers whichever path serves the row: the default tiers, a
    second tier (the first too narrow for this nucleus) or the full sort (every tier too narrow); and
    the C++ sampler the bf16 engine uses on a CPU (``kernel``, on the same logits rounded to bf16)."""
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([engine.render(user(QUESTIONS[1]))])).logits[0, -1].float()
    if path == "kernel":
        kernel = load_decode_kernel()
        if kernel is None:
            pytest.skip("no C++ compiler: the engine samples in torch")
        logits = logits.to(torch.bfloat16).float()
    temperature, top_p, rows = 1.3, 0.9, 250
    probs = exact_nucleus(logits, temperature, top_p)
    if path == "kernel":
        # bf16 logits tie often; at the nucleus's edge transformers' sort breaks ties its own way, the
        # kernel by column: the two nuclei may differ only in columns tied with the edge
        ranked = ranked_nucleus(logits, temperature, top_p)
        edge = logits[ranked > 0].min()
        assert bool((logits[(ranked > 0) != (probs > 0)] == edge).all())
        probs = ranked
    support = probs.nonzero().flatten()
    assert 3 < len(support) < 2000
    tiers = {"second-tier": (3, len(support) + 1), "full-sort": (3,)}.get(path, sampling_module.NUCLEUS_TIERS)
    monkeypatch.setattr(sampling_module, "NUCLEUS_TIERS", tiers)
    gen = torch.Generator().manual_seed(11)
    counts = torch.zeros_like(probs)
    for _ in range(8):
        t, p = torch.full((rows,), temperature), torch.full((rows,), top_p)
        if path == "kernel":
            u = torch.rand(rows, generator=gen, dtype=torch.float64)
            drawn = kernel.sample_next(logits.to(torch.bfloat16).expand(rows, -1).contiguous(), t, p, u)
        else:
            drawn = sample_next(logits.expand(rows, -1), t, p, gen)
        counts += torch.bincount(drawn, minlength=len(probs)).float()
    assert counts[probs == 0].sum() == 0  # never outside the nucleus
    expected = probs[support].double().numpy() * counts.sum().item()
    observed = counts[support].double().numpy()
    # pool rare tokens so every expected count is >= 5
    rare = expected < 5
    obs = np.append(observed[~rare], observed[rare].sum())
    exp = np.append(expected[~rare], expected[rare].sum())
    exp *= obs.sum() / exp.sum()
    assert chisquare(obs, exp).pvalue > 1e-3


def test_sampler_per_row_settings():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]] * 3)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.01, 1.0]), gen)
    assert drawn[:2].tolist() == [2, 2]  # greedy row; top_p tiny keeps only the top token


def test_same_requests_same_texts(engine):
    # the float32 engine samples through the C++ sampler where the extension builds
    assert engine._sample_kernel == (load_decode_kernel() is not None)
    sampling = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=sampling, n=2, seed=i) for i, q in enumerate(QUESTIONS)]
    first = {o.id: o.texts for o in engine.generate(reqs)}
    second = {o.id: o.texts for o in engine.generate(reqs)}
    assert first == second
    other = [GenerationRequest(id=r.id, messages=r.messages, sampling=sampling, n=2, seed=r.seed + 100) for r in reqs]
    assert {o.id: o.texts for o in engine.generate(other)} != first
    assert batch_seed([1, 2]) == batch_seed([1, 2]) != batch_seed([2, 1])


def test_choice_probs_shared_prompt_equals_independent_forward(engine):
    messages = user("Rate this answer from 0 to 5: 'Paris is the capital of France.'")
    prefixes = ["The answer is correct. Score: ", "Score: ", "It is a short but accurate answer, so Score: "]
    reqs = [
        ChoiceRequest(id=f"r{i}", messages=messages, assistant_prefix=p, choices=tuple("012345"))
        for i, p in enumerate(prefixes)
    ] + [ChoiceRequest(id="other", messages=user("Which is larger?"), assistant_prefix="Judgment ", choices=("A", "B"))]
    outs = {o.id: o.probs for o in engine.choice_probs(reqs)}
    for r in reqs:
        context, choice_ids = engine.choice_context(r.assistant_prefix, r.choices)
        ids = torch.tensor([engine.render(r.messages) + context])
        with torch.inference_mode():
            p = torch.softmax(engine.model(input_ids=ids).logits[0, -1].float(), -1)[choice_ids]
        np.testing.assert_allclose(outs[r.id], (p / p.sum()).tolist(), atol=1e-4)
        assert abs(sum(outs[r.id]) - 1) < 1e-6


def test_bf16_stays_close_to_float32(engine):
    """Teacher-forced on the float32 greedy continuation, bf16 picks the same top token almost always."""
    bf16 = HFEngine("", device="cpu", model=_bf16_copy(engine.model), tokenizer=engine.tokenizer)
    assert bf16.dtype == torch.bfloat16
    agree = total = 0
    for q in QUESTIONS:
        ids = engine.render(user(q))
        cont = reference_generate(engine, user(q), 12)
        seq = torch.tensor([ids + cont])
        with torch.inference_mode():
            a = engine.model(input_ids=seq).logits[0, len(ids) - 1 : -1].argmax(-1)
            b = bf16.model(input_ids=seq).logits[0, len(ids) - 1 : -1].argmax(-1)
        agree += int((a == b).sum())
        total += len(cont)
    assert agree / total >= 0.85
    greedy = SamplingParams(temperature=0, max_tokens=6)
    out = list(bf16.generate([GenerationRequest(id="x", messages=user(QUESTIONS[0]), sampling=greedy)]))
    assert out[0].texts[0]
    # seeded: the same requests draw the same texts (with the C++ sampler where it builds)
    sampling = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=10)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=sampling, n=3, seed=i) for i, q in enumerate(QUESTIONS)]
    first = [o.texts for o in bf16.generate(reqs)]
    assert [o.texts for o in bf16.generate(reqs)] == first and len({t for texts in first for t in texts}) > 3


def trace_steps(engine: HFEngine, reqs) -> dict[int, list[tuple[int, torch.Tensor]]]:
    """Generate, recording each step (``hf_trace.record_steps``): per batch row, its (sampled token,
    log-softmax) per step (the requests must fit in one batch: row ids restart in each)."""
    assert sum(r.n for r in reqs) <= engine.batch_size
    _, (trace,) = record_steps(engine, reqs)
    steps: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for rows, sampled, logprobs in trace:
        for b, (row, tok) in enumerate(zip(rows, sampled)):
            steps.setdefault(row, []).append((tok, logprobs[b]))
    return steps


@pytest.mark.parametrize("decode_kernel", [True, False], ids=["kernel", "matmuls"])
def test_bf16_engine_as_faithful_as_transformers_bf16(engine, decode_kernel, monkeypatch):
    """The bf16 engine (bf16 attention operands, float32 softmax), with its decoding attention kernel and
    with batched matmuls, departs from float32 no more than transformers' own bf16 forward does: mean
    KL(float32 || bf16) per step, teacher-forced on the engine's samples, over 40 tokens (past one
    growth of the row buffers). The kernel run checks that every decoding step went through the C++
    kernels (the fused decoder's ``kernel_step``: layer kernels and attention kernel)."""
    model = _bf16_copy(engine.model)
    bf16 = HFEngine("", device="cpu", model=model, tokenizer=engine.tokenizer, decode_kernel=decode_kernel)
    assert bf16._sample_kernel == decode_kernel  # the C++ sampler too (its draws: test_decode_kernel.py)
    calls = []
    kernel_step = bf16.fused.kernel_step
    monkeypatch.setattr(bf16.fused, "kernel_step", lambda *a: calls.append(1) or kernel_step(*a))
    monkeypatch.setattr(cache_module, "kernel_attention", lambda *a: calls.append(1) or kernel_attention(*a))
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=40)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=sampling, n=2, seed=i) for i, q in enumerate(QUESTIONS)]
    steps = trace_steps(bf16, reqs)
    assert len(calls) == ((max(len(v) for v in steps.values()) - 1) if decode_kernel else 0)
    prompts = sorted((engine.render(r.messages) for r in reqs for _ in range(r.n)), key=len)  # batch row order
    kl_engine = kl_transformers = 0.0
    for row, v in steps.items():
        prompt, tokens = prompts[row], [tok for tok, _ in v]
        ids = torch.tensor([prompt + tokens])
        window = slice(len(prompt) - 1, len(prompt) - 1 + len(v))
        with torch.inference_mode():
            ref = torch.log_softmax(engine.model(input_ids=ids).logits[0, window].float(), -1)
            theirs = torch.log_softmax(model(input_ids=ids).logits[0, window].float(), -1)
        ours = torch.stack([lp for _, lp in v])
        kl_engine += float((ref.exp() * (ref - ours)).sum())
        kl_transformers += float((ref.exp() * (ref - theirs)).sum())
    assert sum(len(v) for v in steps.values()) > 100
    assert kl_engine <= 1.25 * kl_transformers + 1e-3, (kl_engine, kl_transformers)


def test_compiled_decoding_attention_equals_eager(engine):
    """``compile=True`` (decoding's attention through torch.compile) gives the eager engine's
    distributions at every step, past a growth of the row buffers and a row selection, and its texts."""
    compiled = HFEngine("", device="cpu", model=engine.model, tokenizer=engine.tokenizer, compile=True)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=40)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=sampling, n=2, seed=i) for i, q in enumerate(QUESTIONS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # a fallback to eager would warn: fail instead
        ours = trace_steps(compiled, reqs)
    eager = trace_steps(engine, reqs)
    assert sorted(ours) == sorted(eager)
    for row in eager:
        assert [t for t, _ in ours[row]] == [t for t, _ in eager[row]]
        diff = (torch.stack([lp for _, lp in ours[row]]) - torch.stack([lp for _, lp in eager[row]])).abs().max()
        assert diff < 1e-3, (row, diff)
    assert max(len(v) for v in eager.values()) > cache_module.SUFFIX_BLOCK


def test_stale_row_buffers_change_nothing(engine):
    """Row buffers are reused across batches: leftovers (here NaN) in their unwritten part are masked
    and zeroed, so the texts equal those drawn with fresh buffers."""
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20)
    reqs = [GenerationRequest(id=str(i), messages=user(q), sampling=sampling, n=2, seed=i) for i, q in enumerate(QUESTIONS)]
    engine.row_buffers.clear()
    fresh = [o.texts for o in engine.generate(reqs)]
    with torch.inference_mode():
        for flat in engine.row_buffers._flat.values():
            flat.fill_(float("nan"))
    assert [o.texts for o in engine.generate(reqs)] == fresh


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_inplace_sampler_draws_the_same_tokens():
    """The decoding loop's in-place sampler (it overwrites its logits buffer) equals the copying one."""
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(1)) * 4
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3] * 16)
    top_p = torch.tensor([0.9, 0.95, 1.0, 0.5] * 16)
    drawn = sample_next(logits, temperature, top_p, torch.Generator().manual_seed(5))
    again = sample_next(logits.clone(), temperature, top_p, torch.Generator().manual_seed(5), inplace=True)
    assert torch.equal(drawn, again)
    buf = logits.clone()
    sample_next(buf, torch.full((64,), 0.8), torch.full((64,), 0.95), torch.Generator(), inplace=True)
    assert not torch.equal(buf, logits)  # it did work in place (so the loop must not reuse the logits)


def test_compiled_or_eager_falls_back_when_compiling_fails(monkeypatch):
    """A compiler failure (e.g. no C++ compiler for inductor) warns once and runs the function eagerly."""
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    calls = []
    double = attention_module.compiled_or_eager(lambda x: calls.append(x) or 2 * x)
    with pytest.warns(CompileFallbackWarning, match="no C\\+\\+ compiler"):
        assert double(3) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        assert double(4) == 8  # eager for good: no second warning
    assert calls == [3, 4]


def test_keep_freed_memory_takes_effect_on_linux():
    import platform

    from metareward.engines.hf.device import keep_freed_memory

    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() is keep_freed_memory()  # once per process


ARENA_PROBE = """
import ctypes, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
if sys.argv[1] == "keep":
    from metareward.engines.hf.device import keep_freed_memory
    assert keep_freed_memory()
def work():
    for _ in range(50):
        libc.free(libc.malloc(1 << 20))
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()  # one "Arena N:" block per heap, on stderr
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc")
def test_keep_freed_memory_serves_every_thread_from_one_heap():
    """New threads that allocate get no heap of their own once the engine's setting is in force (by
    default each does, and part of each stays resident after the engine closes)."""
    import subprocess
    import sys

    def arenas(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, check=True)
        return done.stderr.count("Arena ")

    assert arenas("default") > 1  # the probe can tell: four threads got heaps of their own
    assert arenas("keep") == 1
