"""The hf engine's torch sampler: temperature, then top-p (transformers' warpers, exactly), per row.

``sample_next`` is what the engine uses where the C++ sampler (``csrc/sample.cpp``) does not run; both
draw from the same distribution. A batch's generator is seeded with ``seeds.batch_seed`` of its
requests' seeds (re-exported here), so the same requests always give the same texts (the run loop's
resume relies on it).
"""

from __future__ import annotations

import torch

from metareward.seeds import batch_seed

NUCLEUS_TIERS = (16, 64, 1024)  # top-p searches these top-k widths in turn, then sorts the whole vocabulary
TOPK_BLOCK = 64  # top_k's block of columns (one max per block narrows the search)

__all__ = ["NUCLEUS_TIERS", "TOPK_BLOCK", "batch_seed", "sample_next", "top_k"]


def _draw_from_nucleus(probs: torch.Tensor, ids: torch.Tensor, top_p: torch.Tensor, generator) -> torch.Tensor:
    """Draw from sorted (descending) probabilities ``probs`` [R, k] of tokens ``ids``, keeping a token
    while the mass ranked above it is < top_p [R, 1] (the top token always stays)."""
    keep = (probs.cumsum(dim=-1) - probs) < top_p
    keep[:, 0] = True
    picks = torch.multinomial(probs.masked_fill_(~keep, 0.0), 1, generator=generator)
    return ids.gather(1, picks).squeeze(1)


def top_k(x: torch.Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` of a 2-D ``x`` (values descending and their columns), through block maxima
    where that is cheaper. The k largest entries of a row lie in the k blocks of ``block`` columns with
    the largest maxima (k entries are >= the k-th largest block maximum, so the row's k-th largest entry
    is too), so one vectorised max per block and two small top-k's over those blocks replace a top-k over
    the whole row (cheaper on a CPU for a small k of a large vocabulary). Columns past the last whole block are always
    candidates. Among equal values it may return other columns than ``topk``."""
    rows, width = x.shape
    n_blocks = width // block
    if 4 * k > n_blocks:
        return x.topk(k, dim=-1)
    body = n_blocks * block
    maxima = x[:, :body].view(rows, n_blocks, block).amax(dim=-1)
    chosen = maxima.topk(k, dim=-1).indices
    cols = (chosen[:, :, None] * block + torch.arange(block, device=x.device)).view(rows, -1)
    if body < width:
        cols = torch.cat([cols, torch.arange(body, width, device=x.device).expand(rows, -1)], dim=1)
    values, where = x.gather(1, cols).topk(k, dim=-1)
    return values, cols.gather(1, where)


def sample_next(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, generator: torch.Generator,
    inplace: bool = False, scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """One next token per row of float32 ``logits`` [B, V], each row with its own settings.

    temperature 0 = argmax. Otherwise softmax(logits / temperature) restricted to the nucleus: sorted
    by probability, a token is kept while the mass ranked above it is < top_p (transformers'
    ``TopPLogitsWarper``; the top token always stays); top_p >= 1 keeps the whole vocabulary. The
    nucleus is searched in tiers (``NUCLEUS_TIERS``): the top 16 tokens of every row first (``top_k``),
    the top 64, then the top 1024 for the rows whose nucleus is wider, a full sort for the rare rest; a
    row is drawn from the first tier that holds its whole nucleus, so the result is exact whichever tier
    serves it. (How often each tier serves a row: ``docs/performance.md``, "Engine internals (hf)".)

    ``inplace=True`` lets it overwrite ``logits`` (the decoding loop's own buffer) with logits /
    temperature; ``scratch`` is a reused float32 buffer of at least [B, V] for the probabilities. On a
    CPU a fresh [B, V] temporary per pass (50 MB at B=256) costs more in page faults than the arithmetic.
    """
    greedy = temperature <= 0
    rows = (~greedy).nonzero().flatten()
    if rows.numel() == 0:
        return logits.argmax(dim=-1)
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    if rows.numel() == logits.shape[0]:
        x = logits if inplace else logits.clone()
        t, p = temperature[:, None], top_p[:, None]
    else:
        out[greedy] = logits[greedy].argmax(dim=-1)
        x, t, p = logits[rows], temperature[rows, None], top_p[rows, None]
    n = len(rows)
    probs = torch.empty_like(x) if scratch is None else scratch[:n]
    torch.ops.aten._softmax.out(x.div_(t), -1, False, out=probs)  # one fused pass, into reused memory
    tokens = torch.empty(n, dtype=torch.long, device=x.device)
    whole = p[:, 0] >= 1.0
    if bool(whole.any()):  # no truncation: draw from the whole row
        tokens[whole] = torch.multinomial(probs[whole], 1, generator=generator).squeeze(1)
    pending = (~whole).nonzero().flatten()
    vocab = x.shape[-1]
    for k in (*(k for k in NUCLEUS_TIERS if k < vocab), vocab):
        if pending.numel() == 0:
            break
        part = probs if pending.numel() == n else probs[pending]
        top, ids = top_k(part, k) if k < vocab else part.sort(dim=-1, descending=True)
        fits = top.sum(dim=-1) >= p[pending, 0] if k < vocab else torch.ones_like(pending, dtype=torch.bool)
        done = fits.nonzero().flatten()
        tokens[pending[done]] = _draw_from_nucleus(top[done], ids[done], p[pending[done]], generator)
        pending = pending[~fits]
    out[rows] = tokens
    return out

