"""Attention for the hf engine's forwards, registered with transformers when an engine is built.

``shared_prefix_attention`` is the function transformers' attention modules call under the name
``ATTENTION`` (``register_attention`` registers it, once per process, from ``HFEngine.__init__``:
importing this module registers nothing). ``rows_attention`` is its rows phase as a function of tensors
only, so that ``compiled_or_eager`` can compile it.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from metareward.engines.hf.cache import SharedPrefixCache

ATTENTION = "metareward_shared_prefix"
# queries per row from which a padded feed attends through one fused call over copied keys
# (``_feed_attention``); below it the copy costs more than the decomposed softmax saves
FUSED_MIN_QUERIES = 16


@functools.cache
def register_attention() -> None:
    """Register ``shared_prefix_attention`` (and SDPA's mask function) under ``ATTENTION`` with
    transformers, once per process. The model only uses it while the engine sets
    ``config._attn_implementation`` to ``ATTENTION`` (``HFEngine._engine_attention``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, shared_prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def _softmax_parts(scores: torch.Tensor, values: torch.Tensor, maybe_empty: bool = True):
    """Unnormalised softmax pieces of one block of keys: (row max, sum of exp, exp-weighted values).

    ``maybe_empty``: some query may have every key masked (it then contributes 0); False skips that
    guard where each query is known to see at least one key."""
    peak = scores.amax(dim=-1, keepdim=True)
    if maybe_empty:
        peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    weights = scores.sub_(peak).exp_()  # the scores are this function's own temporary
    return peak, weights.sum(dim=-1, keepdim=True), torch.matmul(weights.to(values.dtype), values).float()


def shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for the engine's forwards (``SharedPrefixCache``).

    Phase ``prefix`` (the prompts' own forward): float32 SDPA with the given mask. Phase ``rows``: for
    query rows ``[B, heads, q, d]``, scores against the owner prompt's keys are computed prompt by prompt
    as one matmul over all its rows' query heads that share a KV head (grouped-query attention without
    ``repeat_kv``), scores against the row's own continuation (causal, padding masked) per row, and the
    two softmax parts merged.
    As in transformers' eager attention, the matmuls run in the model's dtype and the softmax in float32
    (PyTorch's CPU bf16 SDPA is slower for one query token: ``docs/performance.md``). Returns ``[B, q, heads, d]``
    in the query's dtype.
    """
    cache: SharedPrefixCache | None = kwargs.get("shared_cache")
    out_dtype = query.dtype
    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if scaling is None:
        scaling = dim**-0.5
    if cache is None or cache.phase == "prefix":
        q = query.float()
        # The engine right-pads prompts, so plain causal attention is exact for every real token (pads
        # come after them) and SDPA can skip the upper triangle; the mask is not needed.
        causal = cache is not None or (attention_mask is None and q_len > 1)
        out = F.scaled_dot_product_attention(
            q, key.float(), value.float(), attn_mask=None if cache is not None else attention_mask, scale=scaling,
            enable_gqa=kv_heads != heads, is_causal=causal,
        )
        return out.transpose(1, 2).to(out_dtype, memory_format=torch.contiguous_format).contiguous(), None

    return cache.attend(module.layer_idx, query, scaling), None


def rows_attention(query, pk_t, pv, sk_t, sv, table, row_slot, prompt_valid, suffix_valid, written: int,
                    scaling: float) -> torch.Tensor:
    """The rows phase's attention (see ``shared_prefix_attention``) as a function of tensors only, so
    that it can be compiled: queries [B, heads, q, d] against the prompts' keys ``pk_t`` (transposed:
    [P, kv, d, Lk]) and values ``pv`` and the rows' buffers ``sk_t`` (transposed) and ``sv`` (``written``
    positions of them real). ``suffix_valid`` [B, >= written]
    marks real continuation positions; None means decoding (one query per row, no padding), where
    only the unwritten tail needs masking. Returns [B, q, heads, d] in the query's dtype."""
    if suffix_valid is not None and query.shape[2] >= FUSED_MIN_QUERIES:
        return _feed_attention(query, pk_t, pv, sk_t, sv, table, row_slot, prompt_valid, suffix_valid, written, scaling)
    bsz, heads, q_len, dim = query.shape
    kv_heads = pk_t.shape[1]
    groups = heads // kv_heads
    # matmuls in the cache's (= the model's) dtype, softmax and merge in float32
    qg = (query * scaling).reshape(bsz, kv_heads, groups * q_len, dim)  # head h uses KV head h // groups
    # 1. the prompt part, shared: [P, kv, C*groups*q, Lp]
    n_prompts, width = table.shape
    qp = qg[table].transpose(1, 2).reshape(n_prompts, kv_heads, width * groups * q_len, dim)
    s1 = torch.matmul(qp, pk_t).float()
    s1 = s1.masked_fill_(~prompt_valid[:, None, None, :], float("-inf"))
    m1, l1, o1 = _softmax_parts(s1, pv, maybe_empty=False)  # every prompt has a token

    def to_rows(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(n_prompts, kv_heads, width, groups * q_len, t.shape[-1]).transpose(1, 2)
        return t.reshape(n_prompts * width, kv_heads, groups * q_len, t.shape[-1])[row_slot]

    m1, l1, o1 = to_rows(m1), to_rows(l1), to_rows(o1)
    # 2. the row's own continuation: [B, kv, groups*q, W], W = the buffers' width
    ls, width = written, sk_t.shape[3]
    s2 = torch.matmul(qg, sk_t).float().reshape(bsz, kv_heads, groups, q_len, width)
    if suffix_valid is not None:
        causal = torch.ones((q_len, width), dtype=torch.bool, device=query.device).tril(ls - q_len)
        valid = torch.zeros((bsz, width), dtype=torch.bool, device=query.device)
        valid[:, :ls] = suffix_valid[:, :ls]
        allowed = causal[None, :, :] & valid[:, None, :]  # [B, q, W]
        s2 = s2.masked_fill_(~allowed[:, None, None], float("-inf"))
    else:  # decoding: only the unwritten tail to mask
        unwritten = torch.arange(width, device=query.device) >= ls
        s2 = s2.masked_fill_(unwritten, float("-inf"))
    # a row may have every continuation key masked: a query of several positions, or one position of a
    # padded feed (a short remainder whose tokens come later); only an unpadded decoding step cannot
    m2, l2, o2 = _softmax_parts(s2.reshape(bsz, kv_heads, groups * q_len, width), sv,
                                maybe_empty=q_len > 1 or suffix_valid is not None)
    # 3. merge
    peak = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - peak), torch.exp(m2 - peak)
    out = (o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)
    out = out.reshape(bsz, heads, q_len, dim)
    return out.transpose(1, 2).to(query.dtype, memory_format=torch.contiguous_format).contiguous()



def _feed_attention(query, pk_t, pv, sk_t, sv, table, row_slot, prompt_valid, suffix_valid, written: int,
                    scaling: float) -> torch.Tensor:
    """``rows_attention`` for a padded feed of ``FUSED_MIN_QUERIES`` or more positions per row (prompt
    remainders, long follow-up contexts, choice passes): each row's prompt keys/values and its own continuation are concatenated
    and attended to in one ``scaled_dot_product_attention`` call (PyTorch's fused CPU/GPU kernels) with
    the padding and causal mask. Copying a prompt's keys once per row costs little beside a feed's many
    queries, where the decomposed softmax of ``rows_attention`` (float32 scores, masked, exponentiated
    and merged in separate passes) cost more than the decoder's matrix products on a CPU
    (``docs/performance.md``). Every query sees at least its prompt's real keys, so no row is fully masked.
    Returns [B, q, heads, d] in the query's dtype."""
    bsz, heads, q_len, dim = query.shape
    width = sk_t.shape[3]
    owner = row_slot // table.shape[1]  # each row's prompt (row_slot = owner * C + slot)
    keys = torch.cat([pk_t[owner].transpose(-1, -2), sk_t.transpose(-1, -2)], dim=2)  # [B, kv, Lk + W, d]
    values = torch.cat([pv[owner], sv], dim=2)
    causal = torch.ones((q_len, width), dtype=torch.bool, device=query.device).tril(written - q_len)
    valid = torch.zeros((bsz, width), dtype=torch.bool, device=query.device)
    valid[:, :written] = suffix_valid[:, :written]
    mask = torch.cat([prompt_valid[owner][:, None, :].expand(bsz, q_len, -1), causal[None] & valid[:, None, :]], dim=2)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask[:, None], scale=scaling,
                                         enable_gqa=keys.shape[1] != heads)
    return out.transpose(1, 2).contiguous()


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` failed and the engine runs the function eagerly instead (``compiled_or_eager``)."""


def compiled_or_eager(fn):
    """``torch.compile(fn, dynamic=True)``, falling back to ``fn`` itself (with a warning, for good) if
    compiling fails, e.g. on a machine without the C++ compiler inductor needs on a CPU.

    For decoding's attention: inductor fuses its small elementwise operations per layer into a few
    loops, at the price of compiling once per process (and a couple of recompiles as shapes first vary).
    Off by default (``engine.compile``); measurements in ``docs/performance.md``, "Engine internals (hf)"."""
    compiled = torch.compile(fn, dynamic=True)
    state = {"fn": compiled}

    def call(*args):
        if state["fn"] is compiled:
            try:
                return compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly instead
                warnings.warn(f"torch.compile failed, decoding attention runs eagerly: {exc!s:.300}",
                              CompileFallbackWarning, stacklevel=2)
                state["fn"] = fn
        return fn(*args)

    return call
