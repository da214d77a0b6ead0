"""``top_k`` (the sampler's block-maxima top-k) returns exactly ``torch.topk``'s values, at columns that
hold them, for any width (a tail past the last whole block included) and with ties."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.engines.hf.sampling import top_k


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 300), k=st.integers(1, 12), block=st.integers(1, 9),
       levels=st.sampled_from([0, 3, 1000]), seed=st.integers(0, 2**31 - 1))
def test_top_k_equals_torch_topk(rows, width, k, block, levels, seed):
    k = min(k, width)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=gen)
    if levels:  # few distinct values: many ties
        x = (x * levels).round() / levels
    values, cols = top_k(x, k, block=block)
    expected = x.topk(k, dim=-1).values
    assert torch.equal(values, expected)
    assert torch.equal(x.gather(1, cols), values)  # the columns hold those values
    assert all(len(set(r)) == k for r in cols.tolist())  # k distinct columns


def test_top_k_uses_blocks_on_a_wide_row():
    """A vocabulary-wide row: exact indices too (no ties), through the block path (4k <= blocks)."""
    x = torch.randn(3, 49_152, generator=torch.Generator().manual_seed(0))
    values, cols = top_k(x, 16)
    ref = x.topk(16, dim=-1)
    assert torch.equal(values, ref.values) and torch.equal(cols, ref.indices)
