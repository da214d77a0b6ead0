"""The hf engine's KV cache: a few prompts' keys/values stored once, many sample rows continuing them.

``SharedPrefixCache`` (a transformers ``Cache``) holds each prompt's keys/values once and each sample
row's own continuation in buffers from a ``RowBufferPool`` the engine reuses across batches. Its
``attend`` runs a rows-phase attention: the C++ kernel (``kernels.py``) where it applies, else
``attention.rows_attention`` (or a compiled copy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from metareward.engines.hf.attention import rows_attention
from metareward.engines.hf.kernels import KEY_BLOCK, NO_MASK, kernel_attention, kernel_supports

SUFFIX_BLOCK = 32  # a row's continuation keys/values grow by this many positions at a time
assert SUFFIX_BLOCK % KEY_BLOCK == 0, "row buffers must hold whole blocks of the decoding kernel's keys"


def _buffer_width(written: int) -> int:
    """Positions a layer's row buffers hold for ``written`` continuation positions: whole
    ``SUFFIX_BLOCK`` s, at least one."""
    return max(1, -(-written // SUFFIX_BLOCK)) * SUFFIX_BLOCK


class RowBufferPool:
    """Flat tensors, kept by the engine across batches, that hold every layer's row buffers (and the
    decoding steps' [rows, vocab] logit buffers, slots ``("logits", ...)``).

    Why: on a CPU, touching freshly allocated memory costs a page fault per 4 KiB page, which for a
    large batch's buffer growth costs more than the attention itself (figures: ``docs/performance.md``,
    "Engine internals (hf)"). Reused memory costs nothing. Each (layer, key/value, side) slot keeps the
    largest tensor asked of it; ``view`` hands out a contiguous prefix of it. Two sides per buffer,
    because growing or selecting rows copies the live buffer into the other side."""

    def __init__(self):
        self._flat: dict[tuple[int, str, int], torch.Tensor] = {}

    def view(self, slot: tuple[int, str, int], shape: tuple[int, ...], like: torch.Tensor,
             reserve: int = 0) -> torch.Tensor:
        """A contiguous ``shape`` tensor in ``slot``'s storage (grown to ``max(numel, reserve)`` first
        if smaller; its contents are whatever was left there)."""
        numel = math.prod(shape)
        flat = self._flat.get(slot)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat[slot] = like.new_empty(max(numel, reserve))
        return flat[:numel].view(shape)

    def clear(self) -> None:
        self._flat.clear()


def _key_width(positions: int) -> int:
    """Positions a key buffer holds for ``positions`` keys: whole ``KEY_BLOCK`` s (the decoding kernel
    scores keys a block at a time, so the buffers it reads are padded to whole blocks)."""
    return -(-positions // KEY_BLOCK) * KEY_BLOCK


class _SharedPrefixLayer(DynamicLayer):
    """One decoder layer's keys/values, in the model's dtype: each prompt's once (``pk`` [P, kv_heads, d,
    Lk], keys TRANSPOSED; ``pv`` [P, kv_heads, Lk, d]) and each sample row's own continuation (``sk`` [B,
    kv_heads, d, W], transposed; ``sv`` [B, kv_heads, W, d]).

    Keys are stored transposed because every reader wants them so: the batched matmul's right-hand
    operand (a transposed view would be copied on every call) and the decoding kernel (scores vectorise
    over key positions). ``Lk`` is the prompts' padded width rounded up to whole ``KEY_BLOCK`` s, with
    zero keys/values there (masked as padding).

    The row buffers live in the cache's ``RowBufferPool``, grow by ``SUFFIX_BLOCK`` positions when full
    and are read whole by attention (``W`` columns, the unwritten ones zero and masked): a slice of a
    wider buffer is not one contiguous matrix per row, and the CPU's bf16 batched matmul copies such an
    operand on every call (slower than the matmul itself: ``docs/performance.md``)."""

    def __init__(self, owner: SharedPrefixCache, index: int):
        super().__init__()
        self.cache = owner
        self.index = index
        self.suffix_len = 0
        self.prompt_width = 0
        self.side = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.cache.phase == "prefix":
            # the prefix forward attends to these states themselves; the stored copies are padded
            n_prompts, heads, self.prompt_width, dim = key_states.shape
            width = _key_width(self.prompt_width)
            self.pk = key_states.new_zeros((n_prompts, heads, dim, width))
            self.pk[..., : self.prompt_width] = key_states.transpose(-1, -2)
            self.pv = value_states.new_zeros((n_prompts, heads, width, dim))
            self.pv[:, :, : self.prompt_width] = value_states
            self.is_initialized = True
            self.keys, self.values = key_states, value_states
            return key_states, value_states
        if self.cache.slots is not None:  # rows left lazily (the kernel path's way): this path needs them gone
            self.cache.materialize()
        rows, _, q_len, _ = key_states.shape
        end = self.suffix_len + q_len
        self.reserve(q_len, key_states)
        # buffer rows past the batch's are parked rows (``SharedPrefixCache.unpark``): not written
        self.sk[:rows, ..., self.suffix_len : end] = key_states.transpose(-1, -2)
        self.sv[:rows, :, self.suffix_len : end] = value_states
        self.suffix_len = end
        return self.sk, self.sv

    def reserve(self, q_len: int, like: torch.Tensor) -> None:
        """Grow the row buffers (``_move``) if they cannot hold ``q_len`` more positions; ``like`` as in
        ``_move``."""
        end = self.suffix_len + q_len
        if not hasattr(self, "sk") or end > self.sk.shape[3]:
            self._move(like, _buffer_width(end))

    def _move(self, like: torch.Tensor, width: int, rows: torch.Tensor | None = None) -> None:
        """Re-lay the row buffers out in the pool's other side: ``width`` positions, only buffer rows
        ``rows`` in that order (None: all). ``like``: a [rows, kv_heads, any, d] tensor of the cache's
        dtype (the new key states, or ``sv``); its row count sizes the first buffers."""
        _, heads, _, dim = like.shape
        current = self.sv.shape[0] if hasattr(self, "sv") else like.shape[0]
        n_rows = current if rows is None else len(rows)
        self.side = 1 - self.side
        used = self.suffix_len
        reserve = n_rows * heads * _buffer_width(self.cache.capacity) * dim
        shapes = {"sk": (n_rows, heads, dim, width), "sv": (n_rows, heads, width, dim)}
        for name, shape in shapes.items():
            new = self.cache.pool.view((self.index, name, self.side), shape, like, reserve)
            old = getattr(self, name, None)
            # positions run along the last dimension of sk, the third of sv
            positions = (lambda t, a, b: t[..., a:b]) if name == "sk" else (lambda t, a, b: t[:, :, a:b])
            if old is not None and rows is not None and old.shape[1:] == new.shape[1:]:
                torch.index_select(old, 0, rows, out=new)  # same width, tail already zero: one gather
            else:
                if old is not None:
                    kept = old if rows is None else old.index_select(0, rows)
                    positions(new, 0, used).copy_(positions(kept, 0, used))
                positions(new, used, width).zero_()  # masked, but 0 * NaN left from an earlier batch is NaN
            setattr(self, name, new)

    def get_seq_length(self) -> int:
        return self.prompt_width + self.suffix_len

    def promote(self, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, target: torch.Tensor,
                tokens: int) -> None:
        """``SharedPrefixCache.promote_rows`` for this layer: prompt i := prompt ``owner[i]``'s keys, then
        row ``rows[m]``'s continuation position ``cols[m]`` at position ``target[m]``; the rows emptied."""
        _, heads, dim, old_width = self.pk.shape
        width = _key_width(tokens)
        pk = self.pk.new_zeros((len(owner), heads, dim, width))
        pv = self.pv.new_zeros((len(owner), heads, width, dim))
        pk[..., :old_width] = self.pk[owner]  # past a prompt's end its padding's keys (masked), then zeros
        pv[:, :, :old_width] = self.pv[owner]
        pk[rows, :, :, target] = self.sk[rows, :, :, cols]
        pv[rows, :, target] = self.sv[rows, :, cols]
        self.pk, self.pv = pk, pv
        self.prompt_width = tokens
        self.suffix_len = 0
        del self.sk, self.sv  # the next growth lays out fresh row buffers

    def select(self, rows: torch.Tensor, prompts: torch.Tensor | None) -> None:
        """Keep buffer rows ``rows`` (in that order) and, if given, prompts ``prompts``."""
        if hasattr(self, "sk"):
            self._move(self.sv, self.sv.shape[2], rows)
        if prompts is not None:
            self.pk, self.pv = self.pk[prompts], self.pv[prompts]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise RuntimeError("unsupported on a shared-prefix layer cache: use SharedPrefixCache.select_rows")

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("unsupported on a shared-prefix layer cache: the engine never crops it")


class SharedPrefixCache(Cache):
    """A KV cache where many sample rows continue a few prompts without copying them.

    Phase ``prefix``: one forward over the right-padded prompts stores their keys/values once.
    ``start_rows(owner)`` then opens phase ``rows``: row ``j`` continues prompt ``owner[j]`` and every later
    forward appends one key/value per row and position. ``shared_prefix_attention`` attends each row to
    its prompt's keys (shared by all that prompt's rows, read once per prompt: this is what makes N
    judgments of a 500-token prompt cheap) and to its own continuation, merging the two softmax parts
    exactly (log-sum-exp). ``select_rows`` drops finished rows, and prompts no row continues any more.

    Row slots: batch row ``b`` keeps its continuation in buffer row ``slots[b]`` (``slots`` None: row b).
    ``select_rows(rows, lazy=True)``, for the C++ decoding path, which reads and writes through the
    slots, drops rows by dropping them from the map alone (no buffer is copied, so finished rows can
    leave at every step); the buffers are gathered down to the live slots when they next grow
    (``reserve``), or at once (``materialize``) before a torch operation reads them.

    Parking: ``select_rows(rows, lazy=True, park=True)`` also keeps the dropped rows' buffer rows
    (``parked``, in the order dropped; kept through later growths), so that their keys/values can be
    continued after decoding (``unpark``): the engine reads a ``ChoiceFollowUp``'s distribution from
    a finished sample's own cache that way.

    Row buffers come from ``pool`` (the engine's, reused across batches; a fresh one if None) and are
    reserved for ``capacity`` continuation positions at the first growth. ``decode_attention``: the
    function that runs decoding steps' attention in torch (``rows_attention`` or a compiled copy of
    it). ``decode_kernel``: the compiled decoding kernel (``kernels.py``) or None; where given, it
    runs decoding steps whose queries it supports (bf16 on a CPU), ``decode_attention`` the others.
    """

    def __init__(self, num_layers: int, capacity: int = SUFFIX_BLOCK, pool: RowBufferPool | None = None,
                 decode_attention=None, decode_kernel=None):
        super().__init__(layers=[_SharedPrefixLayer(self, i) for i in range(num_layers)])
        self.phase = "prefix"
        self._identity = torch.zeros(0, dtype=torch.long)  # arange(rows), set by start_rows
        self.capacity = capacity
        self.pool = pool if pool is not None else RowBufferPool()
        self.decode_attention = decode_attention or rows_attention
        self.decode_kernel = decode_kernel

    def start_rows(self, owner: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Open the rows phase; ``prompt_mask`` [P, Lp] is the prompts' padding mask (1 = token)."""
        self.phase = "rows"
        width = prompt_mask.shape[1]
        self.prompt_valid = F.pad(prompt_mask.bool(), (0, _key_width(width) - width))  # as the stored keys
        self.prompt_len = right_padded_lengths(self.prompt_valid)
        self.suffix_valid = torch.zeros((len(owner), 0), dtype=torch.bool, device=owner.device)
        self.suffix_all_valid = True
        self.suffix_start = torch.zeros(len(owner), dtype=torch.long, device=owner.device)
        self.slots: torch.Tensor | None = None
        self._identity = torch.arange(len(owner), device=owner.device)
        self.parked_slots = torch.zeros(0, dtype=torch.long, device=owner.device)  # buffer rows kept for unpark
        self.parked_owner = torch.zeros(0, dtype=torch.long, device=owner.device)
        self._set_owner(owner)

    def _set_owner(self, owner: torch.Tensor) -> None:
        # rows of each prompt as a padded [P, C] table (C = most rows of one prompt) for batched matmuls
        self.owner = owner
        if len(owner) > len(self._identity):  # rows repeated (a prompt remainder's samples)
            self._identity = torch.arange(len(owner), device=owner.device)
        counts = torch.bincount(owner, minlength=self.prompt_valid.shape[0])
        width = int(counts.max())
        first = torch.cumsum(counts, 0) - counts
        order = torch.argsort(owner, stable=True)
        slot = torch.empty_like(owner)
        slot[order] = torch.arange(len(owner), device=owner.device) - first[owner[order]]
        table = torch.zeros((len(counts), width), dtype=torch.long, device=owner.device)
        table[owner, slot] = torch.arange(len(owner), device=owner.device)
        self.table = table  # [P, C] row index (0 where unused: computed, then never read)
        self.row_slot = owner * width + slot  # where row j's result lies in the flattened [P*C] table

    def add_suffix(self, valid: torch.Tensor) -> None:
        """Record which of the next positions of each row are real tokens ([B, q] bool)."""
        valid = valid.bool()
        self.suffix_valid = torch.cat([self.suffix_valid, valid], dim=1)
        if not bool(valid.all()) or self.suffix_start is None:
            self._suffix_form()

    def set_suffix_valid(self, valid: torch.Tensor) -> None:
        """Replace the record of which written continuation positions are real ([B, written] bool)."""
        self.suffix_valid = valid.bool()
        self._suffix_form()

    def _suffix_form(self) -> None:
        """``suffix_all_valid``: every written position is real; ``suffix_start``: [B] count of each row's
        leading padded positions when those are its only padded ones (what the decoding kernel reads:
        a prompt remainder fed left-padded, then decoding), else None."""
        valid = self.suffix_valid
        self.suffix_all_valid = bool(valid.all())
        lead = (~valid).long().cumprod(1).sum(1)
        self.suffix_start = lead if bool((valid.sum(1) + lead == valid.shape[1]).all()) else None

    def attend(self, index: int, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Rows-phase attention of layer ``index``'s queries [B, heads, q, d] (its keys/values already
        appended): ``decode_attention`` for a decoding step (one query per row, no padding so far),
        ``rows_attention`` with the padding mask otherwise. Returns [B, q, heads, d]."""
        layer = self.layers[index]
        if (query.shape[2] == 1 and self.decode_kernel is not None and self.prompt_len is not None
                and kernel_supports(query, query.shape[-1], query.shape[1], layer.pk.shape[1])):
            start, valid = self.kernel_mask()
            return kernel_attention(self.decode_kernel, query, layer.pk, layer.pv, self.prompt_len, self.owner,
                                    layer.sk, layer.sv, layer.suffix_len, scaling, self.row_slots(), start, valid)
        decoding = query.shape[2] == 1 and self.suffix_all_valid
        attention = self.decode_attention if decoding else rows_attention
        rows = query.shape[0]  # buffer rows past these are parked (contiguous slices: no copy)
        return attention(
            query, layer.pk, layer.pv, layer.sk[:rows], layer.sv[:rows], self.table, self.row_slot,
            self.prompt_valid, None if decoding else self.suffix_valid, layer.suffix_len, scaling,
        )

    def promote_rows(self) -> torch.Tensor:
        """Make each row's real continuation part of a prompt of its own: prompt i := prompt ``owner[i]``'s
        tokens followed by row i's real (unmasked) continuation positions, right-padded as prefilled
        prompts are; the rows are emptied. Returns the new prompts' padding mask [rows, L] (1 = token),
        for ``start_rows``, which opens the rows phase over them.

        Why: with prefix sharing across requests, each request's prompt remainder is fed into a row of
        its own; its N samples would otherwise each decode over a copy of that row, reading the
        remainder's keys once per sample and step (per row, from memory: the copies do not stay in
        cache). As part of a prompt they are read once per prompt and KV head by all its samples.
        Assumes right-padded prompts (``prompt_len`` known) and equal keys/values whichever way they
        are read (they are copied, not recomputed)."""
        if self.prompt_len is None:
            raise ValueError("promote_rows needs right-padded prompts")
        self.materialize()
        owner, valid = self.owner, self.suffix_valid
        base = self.prompt_len[owner]
        total = base + valid.sum(1)
        rows, cols = valid.nonzero(as_tuple=True)
        target = base[rows] + (valid.long().cumsum(1) - 1)[rows, cols]
        tokens = int(total.max())
        for layer in self.layers:
            layer.promote(owner, rows, cols, target, tokens)
        self.phase = "prefix"
        return (torch.arange(tokens, device=owner.device)[None, :] < total[:, None]).long()

    def kernel_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoding kernel's view of which written continuation positions each row attends to:
        (``start`` [B], ``valid``) where ``valid`` is empty when each row's only masked positions lead
        (``suffix_start``), else the whole [B, written] mask (a follow-up's holes)."""
        if self.suffix_start is not None:
            return self.suffix_start, NO_MASK
        start = torch.zeros(len(self.owner), dtype=torch.long, device=self.owner.device)  # unread
        return start, self.suffix_valid.contiguous()

    def row_slots(self) -> torch.Tensor:
        """Each batch row's buffer row, [B] int64 (what the C++ kernels take)."""
        return self.slots if self.slots is not None else self._identity[: len(self.owner)]

    def reserve(self, q_len: int, like: torch.Tensor) -> None:
        """Make every layer's row buffers hold ``q_len`` more positions of the batch's rows, growing them
        where full; a growth also gathers the buffers down to the live slots. ``like``: a [B, kv_heads, any,
        d] tensor of the cache's dtype. For paths that write through ``row_slots`` (the C++ kernels);
        assumes the layers have written equally many positions, as decoding steps do."""
        if all(hasattr(layer, "sk") and layer.suffix_len + q_len <= layer.sk.shape[3] for layer in self.layers):
            return
        parked = len(self.parked_slots)
        rows = self.slots if not parked else torch.cat([self.row_slots(), self.parked_slots])
        for layer in self.layers:
            layer._move(like, _buffer_width(layer.suffix_len + q_len), rows)
        self.slots = None
        if parked:  # gathered behind the live rows, in parking order
            live = len(self.owner)
            self.parked_slots = torch.arange(live, live + parked, device=self.parked_slots.device)

    def unpark(self, order: torch.Tensor, suffix_valid: torch.Tensor, keep_rest: bool = False,
               lazy: bool = False) -> None:
        """Make parked rows the batch's rows: ``order`` indexes the parking order (the live rows are
        dropped); ``suffix_valid`` [len(order), written] says which of each one's written continuation
        positions later queries may attend to. The buffers are gathered at once, or with ``lazy`` left
        as they are, the rows reached through the slot map (for the C++ kernels' path, which reads and
        writes through it). The parked rows not in ``order`` are dropped too, or with ``keep_rest`` stay
        parked (in their order, behind the batch's rows: forwards leave their buffers unwritten) for a
        later ``unpark``."""
        rest = torch.ones(len(self.parked_slots), dtype=torch.bool, device=self.parked_slots.device)
        rest[order] = False
        if not keep_rest:
            rest[:] = False
        self.slots = self.parked_slots[order]
        self.owner = self.parked_owner[order]
        self.parked_slots = self.parked_slots[rest]
        self.parked_owner = self.parked_owner[rest]
        self.suffix_valid = suffix_valid.bool()  # in the order of the rows, as materialize expects
        if lazy:
            self.table = self.row_slot = None  # the torch path's tables: rebuilt by materialize
            self._suffix_form()
        else:
            self.materialize()

    def materialize(self) -> None:
        """Gather the row buffers down to the live rows' slots, so that buffer row b is batch row b."""
        if self.slots is not None:
            self.select_rows(self._identity[: len(self.owner)])

    def select_rows(self, rows: torch.Tensor, lazy: bool = False, park: bool = False) -> None:
        """Keep batch rows ``rows`` (in that order). ``lazy``: by the slot map alone (see the class
        docstring); else the row buffers are copied now and prompts no row continues are dropped.
        ``park`` (lazy only): the rows dropped, in batch order, join ``parked`` (see ``unpark``)."""
        if park:
            if not lazy:
                raise ValueError("rows are parked only by a lazy selection")
            dropped = torch.ones(len(self.owner), dtype=torch.bool, device=self.owner.device)
            dropped[rows] = False
            self.parked_slots = torch.cat([self.parked_slots, self.row_slots()[dropped]])
            self.parked_owner = torch.cat([self.parked_owner, self.owner[dropped]])
        if lazy:
            self.slots = self.row_slots()[rows]
            self.owner = self.owner[rows]
            self.suffix_valid = self.suffix_valid[rows]
            self.suffix_start = None if self.suffix_start is None else self.suffix_start[rows]
            self.table = self.row_slot = None  # the torch path's tables: rebuilt by materialize
            return
        buffer_rows = rows if self.slots is None else self.slots[rows]
        self.slots = None
        owner = self.owner[rows]
        parked = len(self.parked_slots)
        if parked:  # kept, gathered behind the batch's rows in parking order
            buffer_rows = torch.cat([buffer_rows, self.parked_slots])
            self.parked_slots = torch.arange(len(rows), len(rows) + parked, device=rows.device)
        used = torch.unique(torch.cat([owner, self.parked_owner]))
        prompts = None
        if len(used) < self.prompt_valid.shape[0]:
            prompts = used
            remap = torch.full((self.prompt_valid.shape[0],), -1, dtype=torch.long, device=owner.device)
            remap[used] = torch.arange(len(used), device=owner.device)
            owner = remap[owner]
            self.parked_owner = remap[self.parked_owner]
            self.prompt_valid = self.prompt_valid[used]
            self.prompt_len = None if self.prompt_len is None else self.prompt_len[used]
        for layer in self.layers:
            layer.select(buffer_rows, prompts)
        self._set_owner(owner)
        self.set_suffix_valid(self.suffix_valid[rows])


def right_padded_lengths(valid: torch.Tensor) -> torch.Tensor | None:
    """Each prompt's token count if ``valid`` [P, L] marks a prefix of each row (right padding, as the
    engine prefills), else None (the decoding kernel needs that shape)."""
    lengths = valid.sum(1)
    prefix = torch.arange(valid.shape[1], device=valid.device)[None, :] < lengths[:, None]
    return lengths if bool((prefix == valid).all()) else None
