"""The decoding-step attention kernel (``engines/hf/kernels.py``, ``csrc/decode_attention.cpp``).

Checked against float64 attention computed from the same bf16 keys and values: for each supported
head size and several query-heads-per-KV-head, prompt lengths on and off the kernel's key blocks,
continuations of 1 to 80 positions and rows that continue their prompts in shuffled order, the kernel
is within bf16 rounding of the exact result and never further from it than the engine's batched-matmul
path; both builds of the kernel (AVX512-BF16 dot products, plain loops) are checked. Also: the engine uses it for a bf16 model on a CPU (and the bf16 engine's faithfulness test in
``test_hf_engine.py`` then runs through it), the cache hands it the right operands, it rejects what
it cannot run, and a failed build falls back with a warning. The C++ sampler (``csrc/sample.cpp``)
draws, for each uniform, exactly the token the float64 nucleus selects.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from metareward.engines.hf import kernels as decode_kernel
from metareward.engines.hf.attention import rows_attention
from metareward.engines.hf.cache import SharedPrefixCache, right_padded_lengths
from metareward.engines.hf.kernels import KEY_BLOCK, cpu_flags, kernel_attention, load_decode_kernel

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                       reason="no C++ compiler: the engine falls back to batched matmuls"),
]

BF16 = torch.bfloat16


# What the C++ file's bf16 dot-product path needs (its ``#if``): on a CPU without it the host's build
# compiles no dot products, and METAREWARD_NO_BF16_DOT, which only switches that path off, changes nothing.
BF16_DOT = {"avx512_bf16", "avx512f", "avx512bw"} <= cpu_flags()


@pytest.fixture(scope="module", params=["native", "portable"])
def kernel(request):
    """Both builds: the host's (AVX512-BF16 dot products where the CPU has them) and the plain-loop
    one every other CPU runs. On a CPU without AVX512-BF16 the host's build is the plain-loop one, so
    ``portable`` uses it rather than compiling the same code a second time."""
    built = load_decode_kernel(portable=request.param == "portable" and BF16_DOT)
    assert built is not None, "the kernel must build on a machine with a C++ compiler"
    return built


def _width(n: int) -> int:
    return -(-n // KEY_BLOCK) * KEY_BLOCK


def make_case(seed: int, rows: int, prompts: int, kv_heads: int, groups: int, dim: int, prompt_lens: list[int],
              written: int, buffer: int):
    """Random bf16 queries and keys/values laid out as the cache stores them (keys transposed, padded to
    whole key blocks, zero past what is real), rows continuing prompts in a shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    lk = _width(max(prompt_lens))
    query = torch.randn(rows, kv_heads * groups, 1, dim, generator=gen).to(BF16)
    pk = torch.randn(prompts, kv_heads, lk, dim, generator=gen).to(BF16)
    pv = torch.randn(prompts, kv_heads, lk, dim, generator=gen).to(BF16)
    valid = torch.zeros(prompts, lk, dtype=torch.bool)
    for p, n in enumerate(prompt_lens):
        valid[p, :n] = True
        pk[p, :, n:] = 0
        pv[p, :, n:] = 0
    sk = torch.randn(rows, kv_heads, buffer, dim, generator=gen).to(BF16)
    sv = torch.randn(rows, kv_heads, buffer, dim, generator=gen).to(BF16)
    sk[:, :, written:] = 0
    sv[:, :, written:] = 0
    owner = torch.randperm(rows, generator=gen) % prompts
    return query, pk, pv, valid, sk, sv, owner


def exact(query, pk, pv, valid, sk, sv, owner, written, scaling):
    """float64 attention of each row's (bf16-scaled, as the engine scales) query heads over its
    prompt's real keys and its own first ``written`` keys."""
    rows, heads, _, dim = query.shape
    kv_heads = pk.shape[1]
    q = (query * scaling).double().reshape(rows, kv_heads, heads // kv_heads, dim)
    out = []
    for b in range(rows):
        p = int(owner[b])
        keys = torch.cat([pk[p][:, valid[p]], sk[b, :, :written]], dim=1).double()
        values = torch.cat([pv[p][:, valid[p]], sv[b, :, :written]], dim=1).double()
        out.append(torch.softmax(q[b] @ keys.transpose(-1, -2), -1) @ values)
    return torch.stack(out).reshape(rows, 1, heads, dim)


def matmul_path(query, pk, pv, valid, sk, sv, owner, written, scaling):
    """The engine's batched-matmul decoding attention on the same operands."""
    cache = SharedPrefixCache(1)
    cache.prompt_valid = valid
    cache._set_owner(owner)
    return rows_attention(query, pk.transpose(-1, -2).contiguous(), pv, sk.transpose(-1, -2).contiguous(), sv,
                           cache.table, cache.row_slot, valid, None, written, scaling)


CASES = [  # rows, prompts, kv_heads, groups, dim, prompt lengths, written, buffer width
    (12, 3, 3, 3, 64, [57, 40, 64], 80, 96),  # SmolLM2-135M's heads
    (8, 2, 2, 1, 64, [5, 33], 1, 32),
    (8, 4, 1, 4, 128, [31, 32, 33, 100], 32, 32),
    (6, 2, 2, 8, 64, [200, 1], 33, 64),
    (5, 5, 1, 2, 128, [9, 70, 64, 3, 128], 64, 64),
]


@pytest.mark.parametrize("case", CASES, ids=[f"G{c[3]}-d{c[4]}-n{c[6]}" for c in CASES])
def test_kernel_within_bf16_rounding_of_exact_and_no_worse_than_matmuls(kernel, case):
    rows, prompts, kv_heads, groups, dim, lens, written, buffer = case
    query, pk, pv, valid, sk, sv, owner = make_case(sum(lens) + written, rows, prompts, kv_heads, groups, dim, lens,
                                                    written, buffer)
    scaling = dim**-0.5
    want = exact(query, pk, pv, valid, sk, sv, owner, written, scaling)
    got = kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner,
                           sk.transpose(-1, -2).contiguous(), sv, written, scaling)
    assert got.shape == (rows, 1, kv_heads * groups, dim) and got.dtype == BF16
    err = (got.double() - want).abs().max().item()
    reference_err = (matmul_path(query, pk, pv, valid, sk, sv, owner, written, scaling).double() - want).abs().max()
    # outputs are weighted means of N(0, 1) values, |x| < ~3: bf16 rounding alone is up to ~0.008
    assert err < 0.02
    assert err <= reference_err.item() + 1e-3


def test_kernel_output_is_each_rows_own(kernel):
    """Permuting the rows permutes the output the same way (no row reads another's continuation)."""
    query, pk, pv, valid, sk, sv, owner = make_case(7, 8, 2, 3, 3, 64, [40, 20], 17, 32)
    args = (pk.transpose(-1, -2).contiguous(), pv, valid.sum(1))
    out = kernel_attention(kernel, query, *args, owner, sk.transpose(-1, -2).contiguous(), sv, 17, 0.125)
    perm = torch.tensor([3, 1, 7, 0, 2, 6, 5, 4])
    permuted = kernel_attention(kernel, query[perm], *args, owner[perm], sk[perm].transpose(-1, -2).contiguous(),
                                sv[perm], 17, 0.125)
    assert torch.equal(permuted, out[perm])


def test_kernel_reads_each_rows_continuation_from_its_slot(kernel):
    """Rows whose continuations lie in other buffer rows (``slots``, as after finished rows left the
    batch lazily, with buffer rows nobody reads) get exactly what they get with their own buffers."""
    query, pk, pv, valid, sk, sv, owner = make_case(8, 5, 2, 3, 3, 64, [40, 20], 17, 32)
    args = (pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner)
    want = kernel_attention(kernel, query, *args, sk.transpose(-1, -2).contiguous(), sv, 17, 0.125)
    slots = torch.tensor([6, 0, 3, 7, 4])  # 8 buffer rows: 1, 2 and 5 belong to no row
    big_k = torch.full((8, *sk.shape[1:]), float("nan"), dtype=BF16)
    big_v = torch.full((8, *sv.shape[1:]), float("nan"), dtype=BF16)
    big_k[slots], big_v[slots] = sk, sv
    got = kernel_attention(kernel, query, *args, big_k.transpose(-1, -2).contiguous(), big_v, 17, 0.125, slots)
    assert torch.equal(got, want)


def test_kernels_reject_bad_slots(kernel):
    query, pk, pv, valid, sk, sv, owner = make_case(1, 4, 2, 1, 2, 64, [10, 20], 5, 32)
    args = (kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner, sk.transpose(-1, -2).contiguous(), sv,
            5, 0.125)
    with pytest.raises(RuntimeError, match="slot 4 of row 3 outside the 4 buffer rows"):
        kernel_attention(*args, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(RuntimeError, match="3 slots for 4 rows"):
        kernel_attention(*args, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="int64"):
        kernel_attention(*args, torch.tensor([0, 1, 2, 3], dtype=torch.int32))



def test_attention_lets_rows_share_a_slot(kernel):
    """The attention only reads its slots, so rows may share one (the several queries ``kernel_feed``
    gives a row): the same as each row reading its own copy of that buffer row."""
    query, pk, pv, valid, sk, sv, owner = make_case(1, 4, 2, 1, 2, 64, [10, 20], 5, 32)
    args = (kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner)
    shared = kernel_attention(*args, sk.transpose(-1, -2).contiguous(), sv, 5, 0.125, torch.tensor([0, 1, 1, 2]))
    copies = torch.tensor([0, 1, 1, 2])
    want = kernel_attention(*args, sk[copies].transpose(-1, -2).contiguous(), sv[copies].contiguous(), 5, 0.125)
    assert torch.equal(shared, want)

def test_kernel_rejects_what_it_cannot_run(kernel):
    query, pk, pv, valid, sk, sv, owner = make_case(1, 4, 2, 1, 2, 64, [10, 20], 5, 32)
    pkt = pk.transpose(-1, -2).contiguous()
    skt = sk.transpose(-1, -2).contiguous()
    with pytest.raises(RuntimeError, match="whole blocks"):
        kernel_attention(kernel, query, pkt[..., :31].contiguous(), pv[:, :, :31].contiguous(), valid.sum(1), owner,
                         skt, sv, 5, 0.125)
    with pytest.raises(RuntimeError, match="more positions written"):
        kernel_attention(kernel, query, pkt, pv, valid.sum(1), owner, skt, sv, 33, 0.125)
    with pytest.raises(RuntimeError, match="bf16 contiguous"):
        kernel_attention(kernel, query.float(), pkt.float(), pv.float(), valid.sum(1), owner, skt.float(), sv.float(),
                         5, 0.125)


def testright_padded_lengths():
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert right_padded_lengths(valid).tolist() == [2, 4, 1]
    assert right_padded_lengths(torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)) is None  # left padding


def test_cache_decodes_through_kernel_and_matches_matmul_path(kernel):
    """A SharedPrefixCache fed key/value states as the model feeds them: one prefill of two prompts,
    then decoding steps of 6 rows, attends through the kernel, close to the cache without it."""
    gen = torch.Generator().manual_seed(3)
    kv_heads, heads, dim, rows = 3, 9, 64, 6
    prompt_mask = torch.tensor([[1] * 37 + [0] * 3, [1] * 40])
    owner = torch.tensor([0, 1, 0, 1, 1, 0])
    caches = [SharedPrefixCache(1, 40, decode_kernel=kernel), SharedPrefixCache(1, 40)]
    prefix = [torch.randn(2, kv_heads, 40, dim, generator=gen).to(BF16) for _ in range(2)]
    for cache in caches:
        cache.layers[0].update(*prefix)
        cache.start_rows(owner, prompt_mask)
    used = []
    for _ in range(35):  # past a growth of the row buffers (SUFFIX_BLOCK)
        k, v, q = (torch.randn(rows, n, 1, dim, generator=gen).to(BF16) for n in (kv_heads, kv_heads, heads))
        outs = []
        for cache in caches:
            cache.layers[0].update(k, v)
            cache.add_suffix(torch.ones(rows, 1, dtype=torch.bool))
            outs.append(cache.attend(0, q, dim**-0.5).float())
        used.append((outs[0] - outs[1]).abs().max().item())
    assert max(used) < 0.03
    assert caches[0].prompt_len.tolist() == [37, 40]


def test_failed_build_warns_and_returns_none(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load", broken)
    decode_kernel.load_decode_kernel.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert load_decode_kernel() is None
        assert any("no compiler here" in str(w.message) and w.category is decode_kernel.KernelBuildWarning
                   for w in caught)
    finally:
        decode_kernel.load_decode_kernel.cache_clear()



# ---------------------------------------------------------------------- the layer's element-wise kernels


def _bf16_steps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 representable values apart two bf16 tensors are, elementwise (same sign assumed
    where nonzero)."""
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    return (ia - ib).abs()


def test_rms_norm_kernel_within_one_bf16_step_of_transformers(kernel):
    from metareward.engines.hf.fused_decoder import rms_norm

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 576, generator=gen) * 3).to(BF16)
    weight = (torch.rand(576, generator=gen) + 0.5).to(BF16)
    ours, theirs = kernel.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5)
    steps = _bf16_steps_apart(ours, theirs)
    assert int(steps.max()) <= 1 and float((steps == 0).float().mean()) > 0.99


def test_silu_mul_kernel_within_two_bf16_steps_of_torch(kernel):
    gen = torch.Generator().manual_seed(1)
    gate_up = (torch.randn(29, 2 * 1536, generator=gen) * 4).to(BF16)
    ours = kernel.silu_mul(gate_up)
    theirs = torch.nn.functional.silu(gate_up[:, :1536]) * gate_up[:, 1536:]
    steps = _bf16_steps_apart(ours, theirs)
    # a SiLU one step apart can land two apart after the product is rounded
    assert int(steps.max()) <= 2 and float((steps == 0).float().mean()) > 0.99


def test_rotary_into_cache_equals_the_torch_path_exactly(kernel):
    """Rotary embeddings and the query's scaling with transformers' roundings, bit for bit, and the key
    and value written at the position, nothing else touched."""
    from metareward.engines.hf.fused_decoder import apply_rotary

    gen = torch.Generator().manual_seed(2)
    rows, heads, kv_heads, dim, width, position = 5, 9, 3, 64, 32, 7
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=gen).to(BF16)
    angle = torch.rand(rows, dim // 2, generator=gen) * 6
    cos = torch.cat([angle.cos(), angle.cos()], -1).to(BF16)
    sin = torch.cat([angle.sin(), angle.sin()], -1).to(BF16)
    sk = torch.randn(rows, kv_heads, dim, width, generator=gen).to(BF16)
    sv = torch.randn(rows, kv_heads, width, dim, generator=gen).to(BF16)
    sk_before, sv_before = sk.clone(), sv.clone()
    query = kernel.rotary_into_cache(qkv, cos, sin, heads, kv_heads, 0.125, sk, sv, position, torch.arange(rows))

    parts = qkv.view(rows, 1, heads + 2 * kv_heads, dim)
    rotated = apply_rotary(parts[:, :, : heads + kv_heads], cos[:, None, None, :], sin[:, None, None, :])
    want_q = (rotated[:, 0, :heads] * 0.125).reshape(rows, kv_heads, heads // kv_heads, dim)
    assert torch.equal(query, want_q)
    assert torch.equal(sk[..., position], rotated[:, 0, heads:])
    assert torch.equal(sv[:, :, position], parts[:, 0, heads + kv_heads :])
    others = [i for i in range(width) if i != position]
    assert torch.equal(sk[..., others], sk_before[..., others])
    assert torch.equal(sv[:, :, others], sv_before[:, :, others])
    with pytest.raises(RuntimeError, match="outside the row buffers"):
        kernel.rotary_into_cache(qkv, cos, sin, heads, kv_heads, 0.125, sk, sv, width, torch.arange(rows))

    # through slots: row r writes buffer row slots[r] (here of 7, two of them nobody's) and nothing else
    slots = torch.tensor([5, 0, 6, 2, 3])
    big_k = torch.randn(7, kv_heads, dim, width, generator=gen).to(BF16)
    big_v = torch.randn(7, kv_heads, width, dim, generator=gen).to(BF16)
    want_k, want_v = big_k.clone(), big_v.clone()
    want_k[slots, :, :, position] = rotated[:, 0, heads:]
    want_v[slots, :, position] = parts[:, 0, heads + kv_heads :]
    query = kernel.rotary_into_cache(qkv, cos, sin, heads, kv_heads, 0.125, big_k, big_v, position, slots)
    assert torch.equal(query, want_q)
    assert torch.equal(big_k, want_k) and torch.equal(big_v, want_v)
    with pytest.raises(RuntimeError, match="slot 7 of row 4 outside the 7 buffer rows"):
        kernel.rotary_into_cache(qkv, cos, sin, heads, kv_heads, 0.125, big_k, big_v, position,
                                 torch.tensor([5, 0, 6, 2, 7]))
    with pytest.raises(RuntimeError, match="slot 5 given to two rows"):  # it writes: one row per slot
        kernel.rotary_into_cache(qkv, cos, sin, heads, kv_heads, 0.125, big_k, big_v, position,
                                 torch.tensor([5, 0, 5, 2, 1]))


def nucleus_token(logits: torch.Tensor, temperature: float, top_p: float, u: float) -> tuple[int, int]:
    """The token the C++ sampler must return for uniform ``u`` (float64 reference): greedy, or the first
    column of the nucleus (sorted by probability, ties by column) whose cumulative mass exceeds u times
    the nucleus's mass (top_p >= 1: the whole row in column order). Also the nucleus's size."""
    x = logits.double()
    if temperature <= 0:
        return int(x.argmax()), 1
    p = torch.softmax(x / temperature, -1)
    if top_p >= 1:
        c = p.cumsum(0)
        return int((c > u * c[-1]).nonzero()[0]), len(p)
    sp, si = p.sort(descending=True, stable=True)
    keep = (sp.cumsum(0) - sp) < top_p
    keep[0] = True
    c = sp[keep].cumsum(0)
    return int(si[int((c > u * c[-1]).nonzero()[0])]), int(keep.sum())


@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("vocab", [49152 + 17, 200], ids=["blocks-and-tail", "small"])
def test_kernel_sampler_draws_the_nucleus_token_of_each_uniform(kernel, vocab, dtype):
    """For bf16 or float32 logits of every sharpness, per-row temperatures (greedy included) and top-p's (1 included),
    each row's token is exactly the one its uniform selects from the exact nucleus: whether the nucleus
    is found among the top 16 columns, the top 64 or through mass bands (wide nuclei, or a vocabulary
    too small for the block tiers), and with columns past the last whole block."""
    gen = torch.Generator().manual_seed(0)
    rows = 64
    sharpness = torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0, 20.0, 40.0, 80.0] * 8)
    logits = (torch.randn(rows, vocab, generator=gen) * sharpness[:, None]).to(dtype)
    temperature = torch.rand(rows, generator=gen) + 0.3
    temperature[:4] = 0.0
    top_p = torch.rand(rows, generator=gen) * 0.5 + 0.5
    top_p[4:8] = 1.0
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    got = kernel.sample_next(logits, temperature, top_p, u)
    want, sizes = zip(*(nucleus_token(logits[r].float(), float(temperature[r]), float(top_p[r]), float(u[r]))
                        for r in range(rows)))
    assert got.tolist() == list(want)
    nucleus = [n for n, p in zip(sizes[8:], top_p[8:].tolist()) if p < 1]
    if vocab > 4096:  # every search path served some row
        assert min(nucleus) <= 16 and any(16 < n <= 64 for n in nucleus) and max(nucleus) > 64, nucleus


def test_kernel_sampler_rejects_what_it_cannot_run(kernel):
    logits = torch.zeros(2, 100, dtype=BF16)
    t, p, u = torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="contiguous bf16 or float32 CPU matrix"):
        kernel.sample_next(logits.double(), t, p, u)
    with pytest.raises(RuntimeError, match="float32, u float64"):
        kernel.sample_next(logits, t, p, u.float())
    with pytest.raises(RuntimeError, match="one temperature, top_p and u per row"):
        kernel.sample_next(logits, t[:1], p, u)
    for dtype in (BF16, torch.float32):
        for bad in (float("nan"), float("inf"), float("-inf")):
            broken = logits.to(dtype)
            broken[1, 37] = bad
            with pytest.raises(RuntimeError, match="logits of row 1 hold a NaN or an infinity"):
                kernel.sample_next(broken, t, p, u)


@pytest.mark.parametrize("starts", [[0, 5, 31, 32, 33, 1, 0, 79], [70] * 8, [80, 0, 80, 79, 80, 3, 80, 80]],
                         ids=["mixed", "all-padded-but-10", "some-all-padded"])
def test_kernel_skips_each_rows_leading_padding(kernel, starts):
    """``row_start[b]``: row b attends to its continuation from that position on (a prompt remainder fed
    left-padded by prefix sharing across requests): equal to the exact attention over the real keys,
    and a padded key that is huge changes nothing. A row whose written positions are all padding (its
    remainder's feed has not reached its first token) attends to its prompt alone."""
    rows, written = 8, 80
    query, pk, pv, valid, sk, sv, owner = make_case(11, rows, 3, 3, 3, 64, [57, 40, 64], written, 96)
    start = torch.tensor(starts)
    for b, s in enumerate(starts):
        sk[b, :, :s] = 1e4  # masked: would dominate every score if it were attended to
    scaling = 0.125
    got = kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner,
                           sk.transpose(-1, -2).contiguous(), sv, written, scaling, None, start)
    for b, s in enumerate(starts):
        keys = torch.cat([pk[owner[b]][:, valid[owner[b]]], sk[b, :, s:written]], dim=1).double()
        values = torch.cat([pv[owner[b]][:, valid[owner[b]]], sv[b, :, s:written]], dim=1).double()
        q = (query[b : b + 1] * scaling).double().reshape(3, 3, 64)
        want = (torch.softmax(q @ keys.transpose(-1, -2), -1) @ values).reshape(1, 9, 64)
        assert (got[b].double() - want).abs().max() < 0.02, b
    with pytest.raises(RuntimeError, match="starts at"):
        kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner,
                         sk.transpose(-1, -2).contiguous(), sv, written, scaling, None, torch.full((rows,), written + 1))
    with pytest.raises(RuntimeError, match="prompt without keys"):
        kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, torch.tensor([57, 0, 64]), owner,
                         sk.transpose(-1, -2).contiguous(), sv, written, scaling, None, start)


@pytest.mark.parametrize("pattern", ["holes", "none-valid", "wider-mask"])
def test_kernel_attends_to_exactly_the_positions_a_valid_mask_marks(kernel, pattern):
    """``row_valid`` (a follow-up's rows: the sampled tokens its context does not repeat are masked,
    anywhere in the continuation): equal to the exact attention over the prompt and the marked keys, a
    huge unmarked key changes nothing, ``row_start`` is ignored, and the mask may be wider than what
    is written. A row with nothing marked attends to its prompt alone."""
    rows, written = 8, 80
    query, pk, pv, valid, sk, sv, owner = make_case(12, rows, 3, 3, 3, 64, [57, 40, 64], written, 96)
    gen = torch.Generator().manual_seed(5)
    width = written + (17 if pattern == "wider-mask" else 0)
    marks = torch.rand(rows, width, generator=gen) < 0.6
    marks[0, :] = True
    marks[1, 40:60] = False  # one run of holes in the middle
    if pattern == "none-valid":
        marks[2:5, :] = False
    for b in range(rows):
        sk[b, :, :written][:, ~marks[b, :written]] = 1e4  # would dominate every score if it were attended to
    scaling = 0.125
    got = kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner,
                           sk.transpose(-1, -2).contiguous(), sv, written, scaling, None,
                           torch.full((rows,), written), marks)
    for b in range(rows):
        kept = marks[b, :written]
        keys = torch.cat([pk[owner[b]][:, valid[owner[b]]], sk[b, :, :written][:, kept]], dim=1).double()
        values = torch.cat([pv[owner[b]][:, valid[owner[b]]], sv[b, :, :written][:, kept]], dim=1).double()
        q = (query[b : b + 1] * scaling).double().reshape(3, 3, 64)
        want = (torch.softmax(q @ keys.transpose(-1, -2), -1) @ values).reshape(1, 9, 64)
        assert (got[b].double() - want).abs().max() < 0.02, b
    with pytest.raises(RuntimeError, match="valid must be"):
        kernel_attention(kernel, query, pk.transpose(-1, -2).contiguous(), pv, valid.sum(1), owner,
                         sk.transpose(-1, -2).contiguous(), sv, written, scaling, None, None, marks[:, : written - 1])
