"""``SharedPrefixCache.promote_rows``: after prefix sharing across requests has fed each request's
remainder into a row of its own, root and remainder become that request's prompt. Exact values: each new
prompt's keys/values are its root's real ones followed by its row's unmasked ones (left padding and a
hole skipped), zero after (the roots here are zero-padded); the returned mask marks exactly those; the rows are emptied; and attention
through the promoted cache equals attention through the cache before promotion, in float32."""

from __future__ import annotations

import torch

from metareward.engines.hf.attention import rows_attention
from metareward.engines.hf.cache import SharedPrefixCache


def fed_cache():
    """Two roots (lengths 5 and 3, right-padded to 5), three request rows with 4 written positions:
    row 0 left-padded by 1, row 1 by 3, row 2 with a hole at position 2 (the masked-row case)."""
    torch.manual_seed(0)
    kv, dim = 2, 8
    cache = SharedPrefixCache(1, capacity=8)
    layer = cache.layers[0]
    root_k, root_v = torch.randn(2, kv, 5, dim), torch.randn(2, kv, 5, dim)
    root_k[1, :, 3:] = 0
    root_v[1, :, 3:] = 0
    layer.update(root_k, root_v)
    cache.start_rows(torch.tensor([0, 1, 1]), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    valid = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 0, 1]], dtype=torch.bool)
    cache.add_suffix(valid)
    row_k, row_v = torch.randn(3, kv, 4, dim), torch.randn(3, kv, 4, dim)
    layer.update(row_k, row_v)
    return cache, root_k, root_v, row_k, row_v, valid


def test_promoted_prompts_are_root_then_real_remainder():
    cache, root_k, root_v, row_k, row_v, valid = fed_cache()
    mask = cache.promote_rows()
    layer = cache.layers[0]
    lengths = [5 + 3, 3 + 1, 3 + 3]
    assert mask.tolist() == [[1] * n + [0] * (8 - n) for n in lengths]
    roots, root_len = [0, 1, 1], [5, 3, 3]
    for i in range(3):
        want_k = torch.cat([root_k[roots[i], :, : root_len[i]], row_k[i][:, valid[i]]], dim=1)
        want_v = torch.cat([root_v[roots[i], :, : root_len[i]], row_v[i][:, valid[i]]], dim=1)
        assert torch.equal(layer.pk[i, :, :, : lengths[i]], want_k.transpose(-1, -2))
        assert torch.equal(layer.pv[i, :, : lengths[i]], want_v)
        assert not layer.pk[i, :, :, lengths[i] :].any() and not layer.pv[i, :, lengths[i] :].any()
    assert layer.pk.shape[-1] % 32 == 0  # whole key blocks, as the decoding kernel reads them
    assert layer.suffix_len == 0 and not hasattr(layer, "sk")
    assert cache.phase == "prefix"


def test_attention_through_the_promoted_cache_is_unchanged():
    cache, *_ = fed_cache()
    layer = cache.layers[0]
    query = torch.randn(3, 4, 1, 8)  # 4 query heads over 2 KV heads
    before = rows_attention(query, layer.pk, layer.pv, layer.sk, layer.sv, cache.table, cache.row_slot,
                            cache.prompt_valid, cache.suffix_valid, layer.suffix_len, 0.3)
    mask = cache.promote_rows()
    cache.start_rows(torch.arange(3), mask)
    empty = torch.zeros(3, 2, 8, 32)
    after = rows_attention(query, layer.pk, layer.pv, empty, empty.transpose(-1, -2), cache.table, cache.row_slot,
                           cache.prompt_valid, torch.zeros(3, 0, dtype=torch.bool), 0, 0.3)
    assert torch.allclose(before, after, atol=1e-6)
