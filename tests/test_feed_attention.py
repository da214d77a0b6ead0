"""``attention._feed_attention`` (one fused SDPA call over each row's prompt keys and its own) equals the
decomposed softmax of ``rows_attention`` on the same padded feed, in float32: two prompts with rows of
their own, left-padded continuations (one row all padding so far), the unwritten tail of the buffers
holding garbage, and queries fewer than ``FUSED_MIN_QUERIES`` kept on the decomposed path."""

from __future__ import annotations

import pytest
import torch

from metareward.engines.hf import attention


def feed_case(q_len: int):
    torch.manual_seed(q_len)
    rows, heads, kv, dim, lk, width, written = 5, 6, 2, 16, 32, 64, 40
    owner = torch.tensor([0, 0, 1, 1, 1])
    table = torch.tensor([[0, 1, 0], [2, 3, 4]])  # [P, C]: rows of each prompt (unused slots read row 0)
    row_slot = owner * table.shape[1] + torch.tensor([0, 1, 0, 1, 2])
    prompt_valid = torch.zeros(2, lk, dtype=torch.bool)
    prompt_valid[0, :20] = True
    prompt_valid[1, :31] = True
    suffix_valid = torch.ones(rows, written, dtype=torch.bool)
    suffix_valid[1, :7] = False  # left padding
    suffix_valid[3, :] = False  # all padding so far: only its prompt to attend to
    suffix_valid[4, 10:13] = False  # a hole (a follow-up's masked tokens)
    sk = torch.randn(rows, kv, dim, width)
    sk[..., written:] = 1e4  # the unwritten tail: never read
    args = (torch.randn(rows, heads, q_len, dim), torch.randn(2, kv, dim, lk), torch.randn(2, kv, lk, dim), sk,
            torch.randn(rows, kv, width, dim), table, row_slot, prompt_valid, suffix_valid, written, dim**-0.5)
    return args


@pytest.mark.parametrize("q_len", [attention.FUSED_MIN_QUERIES, 24])
def test_fused_feed_attention_equals_the_decomposed_softmax(q_len, monkeypatch):
    args = feed_case(q_len)
    fused = attention.rows_attention(*args)
    monkeypatch.setattr(attention, "FUSED_MIN_QUERIES", 10**6)
    decomposed = attention.rows_attention(*args)
    assert fused.shape == (5, q_len, 6, 16)
    torch.testing.assert_close(fused, decomposed, atol=1e-5, rtol=1e-5)


def test_few_queries_stay_on_the_decomposed_path(monkeypatch):
    called = []
    monkeypatch.setattr(attention, "_feed_attention", lambda *a: called.append(a) or None)
    attention.rows_attention(*feed_case(attention.FUSED_MIN_QUERIES - 1))
    assert not called
    attention.rows_attention(*feed_case(attention.FUSED_MIN_QUERIES))
    assert len(called) == 1
