"""How a pass's requests are cut into resumable chunks (``stages.chunks.cut_chunks``): by sequences, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metareward.stages.chunks import cut_chunks


def test_cut_chunks_fills_each_chunk_up_to_its_size_in_sequences():
    assert cut_chunks([3, 3, 3, 3], 8, weight=lambda n: n) == [[3, 3], [3, 3]]
    assert cut_chunks([1] * 5, 2) == [[1, 1], [1, 1], [1]]  # unweighted: requests
    assert cut_chunks([11, 1, 1, 11], 12, weight=lambda n: n) == [[11, 1], [1, 11]]
    assert cut_chunks([20, 1, 1], 8, weight=lambda n: n) == [[20], [1, 1]]  # too heavy for any chunk: alone
    assert cut_chunks([], 8) == []


@given(st.lists(st.integers(1, 20), max_size=40), st.integers(1, 30))
def test_cut_chunks_properties(weights, size):
    chunks = cut_chunks(weights, size, weight=lambda n: n)
    assert [w for c in chunks for w in c] == weights  # every request once, in order
    for k, c in enumerate(chunks):
        assert c and (sum(c) <= size or len(c) == 1)  # within the size, or one request heavier than it
        if k + 1 < len(chunks):
            assert sum(c) + chunks[k + 1][0] > size  # a chunk is closed only when the next request does not fit
