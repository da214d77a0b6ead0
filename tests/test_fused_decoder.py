"""The hf engine's fused decoding step (``FusedDecoder``) against transformers' own forward.

Both paths decode with the same cache and attention, so the fused step (projections fused, no module
stack) must give exactly the same log-probabilities at every step: checked bit for bit on tiny random
Llama and Qwen2 models (with every kind of bias), in float32 and bf16, past row-buffer growth and row
selection, on the real embedded model in bf16, and after the model's weights change in place. The
C++ layer kernels (``kernel_step``, bf16 on a CPU) are checked against the torch step: within bf16
rounding, not bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from hf_trace import record_steps
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from metareward.engines.base import GenerationRequest, SamplingParams
from metareward.engines.hf import HFEngine
from metareward.engines.hf import cache as cache_module
from metareward.engines.hf import engine as engine_module
from metareward.engines.hf import rows as rows_module
from metareward.engines.hf.fused_decoder import FusedDecoder, unsupported_reason

QUESTIONS = ["What is 2+2?", "Write a haiku about autumn leaves.", "Name three primes and say why they are prime."]
# The C++ layer kernels and the embedded model's tokenizer: not part of `make test-fast`.
pytestmark = pytest.mark.kernel

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from metareward.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


def tiny(kind: str, tokenizer, dtype=torch.float32):
    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SMALL))
    elif kind == "llama-biases":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, attention_bias=True, mlp_bias=True, **SMALL))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **SMALL))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # random biases, so a bias left out or misplaced shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.to(dtype).eval()


def trace(engine: HFEngine, reqs) -> list:
    """[texts, then per decoding step (live rows, their tokens, their log-softmax)] (one batch)."""
    outputs, (steps,) = record_steps(engine, reqs)
    return [[o.texts for o in outputs], *steps]


def requests(max_tokens: int = 12):
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=max_tokens)
    return [GenerationRequest(id=str(i), messages=({"role": "user", "content": q},), sampling=sampling, n=3 - i,
                              seed=i) for i, q in enumerate(QUESTIONS)]


def assert_same_traces(a: list, b: list) -> None:
    assert a[0] == b[0]  # texts
    assert len(a) == len(b) > 3
    for (rows_a, tok_a, lp_a), (rows_b, tok_b, lp_b) in zip(a[1:], b[1:]):
        assert rows_a == rows_b and tok_a == tok_b
        assert torch.equal(lp_a, lp_b), (lp_a - lp_b).abs().max()


def engines(model, tokenizer):
    fused = HFEngine("", device="cpu", model=model, tokenizer=tokenizer, batch_size=8)
    plain = HFEngine("", device="cpu", model=model, tokenizer=tokenizer, batch_size=8, fused_decoder=False)
    assert fused.fused is not None and plain.fused is None
    return fused, plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["llama", "llama-biases", "qwen2"])
def test_fused_step_equals_transformers_forward(kind, dtype, tokenizer, monkeypatch):
    """Bit-identical log-probabilities and texts, with row buffers growing every 2 positions and
    finished rows dropped as soon as they finish."""
    monkeypatch.setattr(cache_module, "SUFFIX_BLOCK", 2)
    monkeypatch.setattr(rows_module, "COMPACT_AT", 1e-9)
    fused, plain = engines(tiny(kind, tokenizer, dtype), tokenizer)
    assert_same_traces(trace(fused, requests()), trace(plain, requests()))


def test_fused_decoder_follows_in_place_weight_updates(tokenizer):
    """An optimizer-style in-place update of the model's weights is picked up at the next batch: the
    fused copies are rebuilt, and the texts follow the new weights (equal to the transformers path's)."""
    model = tiny("llama", tokenizer)
    fused, plain = engines(model, tokenizer)
    before = trace(fused, requests())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = trace(fused, requests())
    assert after[0] != before[0]
    assert_same_traces(after, trace(plain, requests()))


def test_unsupported_models_are_named_and_decode_through_transformers(tokenizer):
    assert unsupported_reason(tiny("llama", tokenizer)) is None
    assert unsupported_reason(tiny("qwen2", tokenizer)) is None
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), head_dim=16, **SMALL))
    assert unsupported_reason(qwen3) == "model type 'qwen3' is not one of ('llama', 'mistral', 'qwen2')"
    llama = tiny("llama", tokenizer)
    llama.config.hidden_act = "gelu"
    assert unsupported_reason(llama) == "activation 'gelu' is not silu"
    with pytest.raises(ValueError, match="activation 'gelu' is not silu"):
        FusedDecoder(llama)
    engine = HFEngine("", device="cpu", model=qwen3.eval(), tokenizer=tokenizer, batch_size=8)
    assert engine.fused is None
    out = list(engine.generate(requests(4)))
    assert [len(o.texts) for o in out] == [3, 2, 1]


@pytest.mark.slow
def test_fused_step_equals_transformers_forward_on_the_embedded_model(tokenizer):
    """The real SmolLM2 in bf16 (the engine's CPU default), 40 tokens: past a growth of the row buffers."""
    from transformers import AutoModelForCausalLM

    from metareward.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=torch.bfloat16).eval()
    fused, plain = engines(model, tokenizer)
    fused.fused.kernels = None  # the torch operations (kernel_step is within rounding: tested below)
    reqs = requests(40)
    ours = trace(fused, reqs)
    assert_same_traces(ours, trace(plain, reqs))
    assert max(len(rows) for rows, _, _ in ours[1:]) == 6 and len(ours) - 1 > cache_module.SUFFIX_BLOCK


def kernel_shaped_engine(tokenizer) -> tuple[HFEngine, LlamaForCausalLM]:
    """An engine over a tiny random bf16 Llama with head size 64 (a shape the C++ kernels take)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=512)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return HFEngine("", device="cpu", model=model, tokenizer=tokenizer, batch_size=8), model


def test_kernel_step_within_bf16_rounding_of_the_torch_step(tokenizer):
    """A bf16 Llama with head size 64 (what the C++ kernels take), 35 decoding steps of 6 rows over 3
    prompts, the same tokens fed to both: ``kernel_step``'s log-probabilities stay close to the torch
    step's (both attend through the attention kernel, so this isolates the layer kernels)."""
    engine, model = kernel_shaped_engine(tokenizer)
    config, decoder = model.config, engine.fused
    assert decoder.kernels is not None
    prompts = [engine.render(({"role": "user", "content": q},)) for q in QUESTIONS]
    owner = torch.tensor([0, 0, 1, 2, 2, 2])
    gen = torch.Generator().manual_seed(0)
    diffs = []
    with torch.inference_mode():
        runs = []
        for _ in range(2):
            _, cache, mask, last = engine._prefill(prompts, 40)
            cache.pool = cache_module.RowBufferPool()  # each run its own row buffers (not the engine's)
            cache.start_rows(owner, mask)
            runs.append((cache, last[owner]))
        assert decoder.kernels_apply(runs[0][0])
        for step in range(35):  # past a growth of the row buffers
            tokens = torch.randint(0, config.vocab_size, (6,), generator=gen)
            outs = []
            for (cache, last), kernels in zip(runs, (decoder.kernels, None)):
                cache.add_suffix(torch.ones(6, 1, dtype=torch.bool))
                decoder.kernels, saved = kernels, decoder.kernels
                try:
                    hidden = decoder.step(cache, tokens, last + 1 + step)
                finally:
                    decoder.kernels = saved
                outs.append(torch.log_softmax(model.lm_head(hidden).float(), -1))
            diffs.append((outs[0] - outs[1]).abs())
    diffs = torch.stack(diffs)
    assert float(diffs.max()) < 0.1 and float(diffs.mean()) < 0.01, (float(diffs.max()), float(diffs.mean()))



def test_kernel_feed_within_bf16_rounding_of_kernel_steps(tokenizer):
    """``kernel_feed`` (all of a follow-up's tokens at once, one virtual row per real token) against
    feeding the same left-padded tokens one column per ``kernel_step``: rows with holes in their masks
    (sampled tokens a context does not repeat), needs from 1 to 5, rows on shared slots after some rows
    left by the slot map. Same hidden states to bf16 rounding (the matrix products see more rows at
    once), and the cache holds the same keys and values afterwards where they are attended to."""
    engine, model = kernel_shaped_engine(tokenizer)
    config, decoder = model.config, engine.fused
    prompts = [engine.render(({"role": "user", "content": q},)) for q in QUESTIONS]
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    seqs = [[5], [7, 8, 9], [11, 12, 13, 14, 15], [], [17, 18], [19, 20, 21, 22]]
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        runs = []
        for _ in range(2):
            _, cache, mask, last = engine._prefill(prompts, 40)
            cache.pool = cache_module.RowBufferPool()
            cache.start_rows(owner, mask)
            runs.append((cache, last[owner]))
        steps = torch.randint(0, config.vocab_size, (10, 7), generator=gen)
        for cache, last in runs:
            for step in range(10):
                cache.add_suffix(torch.ones(7, 1, dtype=torch.bool))
                decoder.kernel_step(cache, steps[step], last + 1 + step)
            cache.select_rows(torch.tensor([0, 1, 2, 3, 4, 5]), lazy=True)  # row 6 leaves by the slot map
            holes = torch.ones(6, 10, dtype=torch.bool)
            holes[1, 6:] = False  # a context that repeats only 6 of its sampled tokens
            holes[2, 3:8] = False
            cache.set_suffix_valid(holes)
        fed = [s or [3] for s in seqs]
        ids, mask = engine._pad_left(fed)
        pos = engine_module.fed_positions(mask, runs[0][1][:6] + 11)
        (one, _), (many, _) = runs
        one.add_suffix(mask)
        together = decoder.kernel_feed(one, ids, mask, pos)
        for t in range(ids.shape[1]):
            many.add_suffix(mask[:, t : t + 1])
            stepped = decoder.kernel_step(many, ids[:, t], pos[:, t])
        a = torch.log_softmax(model.lm_head(together).float(), -1)
        b = torch.log_softmax(model.lm_head(stepped).float(), -1)
        assert float((a - b).abs().max()) < 0.05, float((a - b).abs().max())
        assert one.layers[0].suffix_len == many.layers[0].suffix_len == 15
        seen = one.suffix_valid  # the positions later queries attend to hold the same keys and values
        for layer_one, layer_many in zip(one.layers, many.layers, strict=True):
            for b_row, slot_one, slot_many in zip(range(6), one.row_slots().tolist(), many.row_slots().tolist(),
                                                   strict=True):
                cols = seen[b_row, :15].nonzero().squeeze(1)
                k1 = layer_one.sk[slot_one][..., cols].float()
                k2 = layer_many.sk[slot_many][..., cols].float()
                assert float((k1 - k2).abs().max()) <= 0.05 * float(k2.abs().max()) + 1e-3

def test_rows_leaving_by_the_slot_map_equal_rows_copied_out(tokenizer):
    """Finished rows leave a kernel-path batch lazily (``select_rows(lazy=True)``: only the slot map
    changes, buffers are gathered at their next growth or before a torch step): the live rows' hidden
    states equal, bit for bit, those of a batch whose buffers are copied at once. Rows leave before the
    first step, while a prompt still has rows and when its last row goes, before and after a growth of
    the row buffers (at 32 positions); one torch step mid-way materialises the slots."""
    engine, model = kernel_shaped_engine(tokenizer)
    config, decoder = model.config, engine.fused
    prompts = [engine.render(({"role": "user", "content": q},)) for q in QUESTIONS]
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 2])
    leave = {0: [1], 5: [3], 12: [0], 20: [2], 28: [0], 34: [1]}  # step -> batch rows (of those left) that finish
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        runs = []
        for lazy in (True, False):
            _, cache, mask, last = engine._prefill(prompts, 40)
            cache.pool = cache_module.RowBufferPool()  # each run its own row buffers (not the engine's)
            cache.start_rows(owner, mask)
            runs.append([cache, last[owner], lazy])
        assert decoder.kernels_apply(runs[0][0])
        for step in range(40):
            keep = None
            if step in leave:
                alive = len(runs[0][1])
                keep = torch.tensor([b for b in range(alive) if b not in leave[step]])
            tokens = None
            outs = []
            for run in runs:
                cache, last, lazy = run
                if keep is not None:
                    cache.select_rows(keep, lazy=lazy)
                    run[1] = last = last[keep]
                if tokens is None:
                    tokens = torch.randint(0, config.vocab_size, (len(last),), generator=gen)
                cache.add_suffix(torch.ones(len(last), 1, dtype=torch.bool))
                decoder.kernels, saved = (None if step == 25 else decoder.kernels), decoder.kernels
                try:
                    outs.append(decoder.step(cache, tokens, last + 1 + step))
                finally:
                    decoder.kernels = saved
                if lazy and step == 21:  # rows left at 20 by the map alone: the buffers still hold them
                    assert cache.slots is not None and cache.layers[0].sv.shape[0] == 6 > len(last)
            assert torch.equal(outs[0], outs[1]), step
        lazy_cache, copied = runs[0][0], runs[1][0]
        # the torch step (25) gathered the buffers down to 3 rows, the growth (32) to 2; step 34's leaver
        # is still there: no growth or torch step came after it
        assert lazy_cache.slots is not None and lazy_cache.layers[0].sv.shape[0] == 2 == copied.layers[0].sv.shape[0] + 1
        assert copied.layers[0].pk.shape[0] == 1 < lazy_cache.layers[0].pk.shape[0]  # prompts dropped by copying
