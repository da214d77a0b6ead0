"""The decoding loop's row bookkeeping: which sample each batch row is, what it sampled, when it leaves.

``HFEngine._generate_batch`` runs one row per sample. ``DecodeRows`` holds everything the loop tracks
per row: the tokens sampled so far, whether a row stopped on its own, which rows are still live, each
live row's sampling settings, budget and position, and (for follow-ups read after decoding) the rows
parked in the cache. Rows are numbered by their original index ("row r" below); the batch rows of a
step are ``alive`` (original index of each batch row), which shrinks as finished rows leave.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from metareward.engines.base import Completion, GenerationRequest
from metareward.engines.hf.cache import SharedPrefixCache

COMPACT_AT = 0.25  # off the C++ kernels' path, finished rows leave the batch once they are this fraction of it


class DecodeRows:
    """Per-row state of one batch's decoding loop (see the module docstring).

    ``owner[r]``: the request row r samples for; ``prompt_len[r]``: its whole prompt's length; ``lazy``:
    the C++ kernels' path, where a finished row leaves the batch at once through the cache's row-slot map
    (no copy) and is parked there when follow-ups will read it. Elsewhere dropping rows copies every
    layer's continuation cache, so finished rows are carried (their tokens ignored) until ``COMPACT_AT``
    of the batch has finished, or to the end where follow-ups will read them."""

    def __init__(self, reqs: Sequence[GenerationRequest], owner: torch.Tensor, prompt_len: torch.Tensor,
                 stop: torch.Tensor, lazy: bool):
        dev = owner.device
        owners = owner.tolist()
        self.requests = [reqs[o] for o in owners]  # the request of each row
        self.prompt_len = prompt_len
        self.last_pos = prompt_len - 1  # position of each batch row's last fed token
        self.temperature = torch.tensor([r.sampling.temperature for r in self.requests], dtype=torch.float32, device=dev)
        self.top_p = torch.tensor([r.sampling.top_p for r in self.requests], dtype=torch.float32, device=dev)
        self.budget = torch.tensor([r.sampling.max_tokens for r in self.requests], device=dev)
        self.stop = stop
        self.lazy = lazy
        rows = len(owners)
        # rows whose follow-up is read from their own cache after decoding: kept (parked) when they finish
        self.follow = [r for r, req in enumerate(self.requests) if req.follow_up is not None]
        self.parked: list[int] = []  # original rows in the cache's parking order (lazy path)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.alive = torch.arange(rows, device=dev)  # original row index of each batch row
        self.live = torch.ones(rows, dtype=torch.bool, device=dev)  # batch rows still generating

    def record(self, nxt: torch.Tensor, step: int) -> int:
        """Append step ``step``'s tokens ``nxt`` (one per batch row) to the live rows; a row ends on a stop
        token or at its ``max_tokens``. Returns how many batch rows are still live."""
        stop = torch.isin(nxt, self.stop)
        done = (stop | (self.budget <= step)) & self.live
        idx = self.live.nonzero().flatten()
        for r, t, s in zip(self.alive[idx].tolist(), nxt[idx].tolist(), stop[idx].tolist()):
            self.tokens[r].append(t)
            self.finished[r] = s
        self.live &= ~done
        return int(self.live.sum())

    def leave(self, cache: SharedPrefixCache, nxt: torch.Tensor, n_live: int) -> torch.Tensor:
        """Let finished rows leave the batch where it pays (see the class docstring); returns ``nxt`` for
        the batch rows that stay."""
        dropped = len(self.live) - n_live
        if dropped and (self.lazy or (dropped >= COMPACT_AT * len(self.live) and not self.follow)):
            keep = self.live.nonzero().flatten()
            if self.lazy and self.follow:
                self.parked += self.alive[~self.live].tolist()
            cache.select_rows(keep, lazy=self.lazy, park=self.lazy and bool(self.follow))
            self.alive, nxt, self.last_pos, self.live = self.alive[keep], nxt[keep], self.last_pos[keep], self.live[keep]
            self.temperature, self.top_p, self.budget = self.temperature[keep], self.top_p[keep], self.budget[keep]
        return nxt

    def park_last(self, cache: SharedPrefixCache) -> list[int] | None:
        """After decoding: on the lazy path, park the last rows to finish too and return every row in the
        cache's parking order; else None (the batch still holds every row in order)."""
        if not self.lazy:
            return None
        cache.select_rows(self.alive[:0], lazy=True, park=True)
        self.parked += self.alive.tolist()
        return self.parked

    def texts(self, tokenizer) -> list[str]:
        """Each row's text: its tokens decoded without the stop token, special tokens skipped, stripped."""
        return [tokenizer.decode(t[:-1] if f else t, skip_special_tokens=True).strip()
                for t, f in zip(self.tokens, self.finished, strict=True)]

    def completions(self, texts: Sequence[str], follow_probs: Mapping[int, list[float]]) -> list[Completion]:
        """Each row's sample as the engine returns it: its text (``texts``), the tokens it generated (the
        stop token counted), whether it stopped on its own, and its follow-up's answer where one was read
        (``follow_probs``, by row)."""
        return [Completion(text, len(tokens), finished, follow_probs.get(r))
                for r, (text, tokens, finished) in enumerate(zip(texts, self.tokens, self.finished, strict=True))]
