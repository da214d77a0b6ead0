"""The hf engine's decoding-loop bookkeeping (``rows.DecodeRows``) and batch cutting
(``schedule.cut_batches``), on exact cases without a model."""

from __future__ import annotations

import torch

from metareward.engines.base import ChoiceFollowUp, Completion, GenerationRequest, SamplingParams
from metareward.engines.hf import rows as rows_module
from metareward.engines.hf.rows import DecodeRows
from metareward.engines.hf.schedule import cut_batches


class FakeCache:
    """Records the row selections the loop asks of the cache."""

    def __init__(self):
        self.calls: list[tuple[list[int], bool, bool]] = []

    def select_rows(self, rows, lazy=False, park=False):
        self.calls.append((rows.tolist(), lazy, park))


def request(n: int, max_tokens: int, follow: bool = False, temperature: float = 0.5) -> GenerationRequest:
    return GenerationRequest(id=f"r{n}{max_tokens}", messages=({"role": "user", "content": "x"},),
                             sampling=SamplingParams(temperature=temperature, top_p=0.9, max_tokens=max_tokens), n=n,
                             follow_up=ChoiceFollowUp(str, ("A", "B")) if follow else None)


def make_rows(reqs, lazy: bool) -> DecodeRows:
    owner = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor([r.n for r in reqs]))
    prompt_len = torch.tensor([10, 10, 20][: len(owner)])
    return DecodeRows(reqs, owner, prompt_len, torch.tensor([0]), lazy)


def test_rows_record_tokens_until_stop_or_budget():
    rows = make_rows([request(2, 3), request(1, 1, temperature=0.0)], lazy=False)
    assert rows.temperature.tolist() == [0.5, 0.5, 0.0] and rows.budget.tolist() == [3, 3, 1]
    assert rows.last_pos.tolist() == [9, 9, 19]
    assert rows.record(torch.tensor([5, 0, 7]), 1) == 1  # row 1 stops, row 2 reaches its budget
    assert rows.tokens == [[5], [0], [7]] and rows.finished == [False, True, False]
    assert rows.record(torch.tensor([6, 9, 9]), 2) == 1  # finished rows' tokens are ignored
    assert rows.tokens == [[5, 6], [0], [7]]
    assert rows.record(torch.tensor([8, 9, 9]), 3) == 0  # row 0 at its budget: not finished on its own
    assert rows.tokens == [[5, 6, 8], [0], [7]] and rows.finished == [False, True, False]


def test_finished_rows_leave_in_bulk_off_the_kernel_path(monkeypatch):
    cache = FakeCache()
    rows = make_rows([request(2, 3), request(1, 1)], lazy=False)
    monkeypatch.setattr(rows_module, "COMPACT_AT", 0.9)  # 1 of 3 rows finished: carried
    n_live = rows.record(torch.tensor([4, 4, 4]), 1)
    assert n_live == 2 and rows.leave(cache, torch.tensor([4, 4, 4]), n_live).tolist() == [4, 4, 4]
    assert cache.calls == [] and rows.alive.tolist() == [0, 1, 2]
    monkeypatch.setattr(rows_module, "COMPACT_AT", 0.25)
    nxt = rows.leave(cache, torch.tensor([4, 5, 6]), n_live)
    assert cache.calls == [([0, 1], False, False)]
    assert nxt.tolist() == [4, 5] and rows.alive.tolist() == [0, 1] and rows.budget.tolist() == [3, 3]
    assert rows.last_pos.tolist() == [9, 9] and rows.live.tolist() == [True, True]


def test_rows_with_follow_ups_are_carried_off_the_kernel_path():
    cache = FakeCache()
    rows = make_rows([request(2, 3, follow=True), request(1, 1)], lazy=False)
    assert rows.follow == [0, 1]
    n_live = rows.record(torch.tensor([0, 4, 4]), 1)
    rows.leave(cache, torch.tensor([0, 4, 4]), n_live)
    assert cache.calls == [] and rows.park_last(cache) is None


def test_on_the_kernel_path_rows_leave_at_once_and_park_for_their_follow_ups():
    cache = FakeCache()
    rows = make_rows([request(2, 3, follow=True), request(1, 1)], lazy=True)
    n_live = rows.record(torch.tensor([0, 4, 4]), 1)  # rows 0 (stop) and 2 (budget) finish
    assert rows.leave(cache, torch.tensor([0, 4, 4]), n_live).tolist() == [4]
    assert cache.calls == [([1], True, True)] and rows.parked == [0, 2]
    rows.record(torch.tensor([0]), 2)
    assert rows.park_last(cache) == [0, 2, 1] and cache.calls[-1] == ([], True, True)


def test_texts_drop_the_stop_token():
    class Tokenizer:
        def decode(self, ids, skip_special_tokens):
            return " " + "-".join(map(str, ids)) + " "

    rows = make_rows([request(1, 2), request(1, 2)], lazy=False)
    rows.record(torch.tensor([3, 0]), 1)
    rows.record(torch.tensor([4, 9]), 2)
    assert rows.texts(Tokenizer()) == ["3-4", ""]


def test_completions_count_the_stop_token_and_carry_follow_up_answers():
    rows = make_rows([request(2, 3, follow=True), request(1, 1)], lazy=False)
    rows.record(torch.tensor([5, 0, 7]), 1)  # row 1 stops at once; row 2 reaches its budget
    rows.record(torch.tensor([0, 9, 9]), 2)  # row 0 stops
    assert rows.completions(["a", "", "c"], {0: [0.5, 0.5], 1: [1.0, 0.0]}) == [
        Completion("a", 2, True, [0.5, 0.5]), Completion("", 1, True, [1.0, 0.0]), Completion("c", 1, False)]


def test_cut_batches():
    # by cost: requests 1, 3, 2, 0 with 2, 1, 3, 2 samples, at most 4 sequences a batch
    assert cut_batches([2, 2, 3, 1], [5, 1, 3, 2], 4) == [[1, 3], [2], [0]]
    assert cut_batches([9, 1], [0, 1], 4) == [[0], [1]]  # a request over the size is a batch of its own
    assert cut_batches([1, 1, 1], [0, 0, 0], 2, order=[2, 0, 1]) == [[2, 0], [1]]
    assert cut_batches([], [], 4) == []
