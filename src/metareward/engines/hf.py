"""The transformers engine: CPU or one GPU, the default, runs the embedded model offline.

It drives the model's ``forward`` itself instead of calling ``generate``, because the stages' workloads
have a shape ``generate`` wastes compute on: the judge asks for N samples of one ~500-token prompt, and
``num_return_sequences`` prefills that prompt N times. What it does with a stage's requests:

* applies the model's chat template (``add_generation_prompt``) to each request's messages;
* sorts requests by prompt length and cuts them into batches of about ``batch_size`` sequences
  (a request with ``n`` samples counts ``n``), so padding stays small (*bucketing*);
* prefills each batch's prompts ONCE (right padded: causal SDPA needs no mask; logits only at each
  prompt's last token), then samples the ``n`` continuations of each prompt against that one copy of
  its keys/values (*prefix sharing*, ``SharedPrefixCache`` + ``shared_prefix_attention``: the prompt is
  neither recomputed nor copied, and is read once per decoding step for all its samples);
* each sample's own keys/values go to buffers that grow a block of positions at a time and live in
  memory the engine keeps across batches (``RowBufferPool``: on a CPU, first-touch page faults on
  fresh memory cost more than the attention itself);
* samples each row with its own temperature and top-p (exactly the transformers warpers: temperature,
  then nucleus keeping tokens whose higher-ranked mass is < top_p); ``temperature == 0`` is greedy;
* finishes a sequence as soon as it emits a stop token (the tokenizer's eos, e.g. ``<|im_end|>``,
  plus the generation config's eos ids) or reaches its ``max_tokens``; finished rows leave the batch
  at once on the C++ kernels' path (through the cache's row-slot map, no copy), elsewhere in bulk,
  once they are a quarter of it (each removal copies every layer's continuation cache);
* keeps the per-step [batch, vocab] logits in reused buffers and samples in place (on a CPU, a fresh
  50 MB temporary per full-vocabulary pass costs more in page faults than the arithmetic);
* runs decoding steps' attention through a C++ kernel for bf16 on a CPU (``decode_kernel.py``: one
  pass per row and KV head over the prompt's keys and the row's own, no intermediate tensors), the
  fused decoder's element-wise work through three more (``FusedDecoder.kernel_step``), and, for bf16
  and float32 models on a CPU, the sampler through another, straight from the LM head's output
  (``csrc/sample.cpp``: the same distribution as ``sample_next``, each row read twice instead of ~8
  float32 passes);
* on a CPU, has glibc keep freed memory for reuse (``keep_freed_memory``: a prefill's megabyte-sized
  temporaries otherwise page-fault afresh every time);
* runs decoding steps straight from the weights, projections fused, for Llama-architecture models
  (``FusedDecoder``: same operations as transformers' forward, without its module stack; other models
  decode through transformers' forward with the same cache and attention);
* with ``compile=True``, runs the torch decoding path's attention (and the fused decoder's two halves
  of a layer) through ``torch.compile`` (``compiled_or_eager``), where the C++ kernels do not run;
* seeds each batch's sampler from its requests' seeds, so a given list of requests always yields the
  same texts (the run loop's resume relies on this).

``choice_probs`` prefills each distinct prompt once, runs each request's ``assistant_prefix`` tokens
against it (shared, as above; suffixes left-padded and masked) and reads the softmax of the last
position's logits at each choice's token, renormalised over the choices.

Precision: ``dtype="auto"`` is bf16 on a CUDA device that supports it and on a CPU with native bf16
instructions (AVX512-BF16 or AMX), float32 otherwise. Keys/values are kept and attention's matmuls run
in that dtype with the softmax in float32 (transformers' eager recipe; a test shows the bf16 engine is
as close to float32 as transformers' own bf16 forward); log-probabilities and sampling are float32.

Assumptions: a decoder-only causal LM with full attention whose ``forward`` takes ``position_ids``,
a KV cache (``cache``, or ``past_key_values`` in older transformers) and ``logits_to_keep`` and whose
attention goes through transformers' ``AttentionInterface`` (Llama, Qwen2, Mistral, SmolLM ...), with a
plain LM head (no logit scaling or soft-capping) and a chat template; each choice is a single token after the prefix (checked).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import platform
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.engines.decode_kernel import (
    KEY_BLOCK,
    cpu_flags,
    kernel_attention,
    kernel_supports,
    load_decode_kernel,
)
from metareward.engines.fused_decoder import FusedDecoder, unsupported_reason

NUCLEUS_TIERS = (16, 64, 1024)  # top-p searches these top-k widths in turn, then sorts the whole vocabulary
TOPK_BLOCK = 64  # top_k's block of columns (one max per block narrows the search)
SUFFIX_BLOCK = 32  # a row's continuation keys/values grow by this many positions at a time
assert SUFFIX_BLOCK % KEY_BLOCK == 0, "row buffers must hold whole blocks of the decoding kernel's keys"
COMPACT_AT = 0.25  # off the C++ kernels' path, finished rows leave the batch once they are this fraction of it


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (x86 AVX512-BF16 / AMX-BF16, or Arm BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


MALLOC_KEEP_BYTES = 32 << 20  # glibc's largest heap (not mmap) allocation; freed heap is kept up to 1 GiB


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc (once per process; Linux only) to serve allocations up to 32 MiB from its heap
    and to keep freed heap memory instead of returning it to the OS. True if it took effect.

    Why: by default glibc hands a tensor of more than ~128 KiB-32 MiB fresh pages from the OS and
    returns them when it is freed, so the next one page-faults again (~0.8 GB/s here). A prefill's
    temporaries are megabytes each: measured on this 2-core machine, a 64-prompt actor prefill took a
    median ~2.2 s by default and ~1.75 s with this (its element-wise operations ~10x faster). The cost:
    the process keeps its peak heap mapped (what it freed is reused by later batches and by training
    in the same process). Tensors the engine reuses itself (``RowBufferPool``) never reach malloc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, MALLOC_KEEP_BYTES)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware computes it natively (see module docstring), else float32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def batch_seed(seeds: Sequence[int]) -> int:
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# ---------------------------------------------------------------------- shared-prefix KV cache

ATTENTION = "metareward_shared_prefix"


def _buffer_width(written: int) -> int:
    """Positions a layer's row buffers hold for ``written`` continuation positions: whole
    ``SUFFIX_BLOCK`` s, at least one."""
    return max(1, -(-written // SUFFIX_BLOCK)) * SUFFIX_BLOCK


class RowBufferPool:
    """Flat tensors, kept by the engine across batches, that hold every layer's row buffers (and the
    decoding steps' [rows, vocab] logit buffers, slots ``("logits", ...)``).

    Why: on a CPU, touching freshly allocated memory costs a page fault per 4 KiB page (measured here:
    ~0.8 GB/s, so one growth of a 256-row batch's continuation buffers took 300-450 ms, ~12 ms per
    decoding step amortised). Reused memory costs nothing. Each (layer, key/value, side) slot keeps the
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
    operand on every call (measured: 3-8x slower than the matmul)."""

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
        q_len = key_states.shape[2]
        end = self.suffix_len + q_len
        self.reserve(q_len, key_states)
        self.sk[..., self.suffix_len : end] = key_states.transpose(-1, -2)
        self.sv[:, :, self.suffix_len : end] = value_states
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

    Row buffers come from ``pool`` (the engine's, reused across batches; a fresh one if None) and are
    reserved for ``capacity`` continuation positions at the first growth. ``decode_attention``: the
    function that runs decoding steps' attention in torch (``_rows_attention`` or a compiled copy of
    it). ``decode_kernel``: the compiled decoding kernel (``decode_kernel.py``) or None; where given, it
    runs decoding steps whose queries it supports (bf16 on a CPU), ``decode_attention`` the others.
    """

    def __init__(self, num_layers: int, capacity: int = SUFFIX_BLOCK, pool: RowBufferPool | None = None,
                 decode_attention=None, decode_kernel=None):
        super().__init__(layers=[_SharedPrefixLayer(self, i) for i in range(num_layers)])
        self.phase = "prefix"
        self.capacity = capacity
        self.pool = pool if pool is not None else RowBufferPool()
        self.decode_attention = decode_attention or _rows_attention
        self.decode_kernel = decode_kernel

    def start_rows(self, owner: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Open the rows phase; ``prompt_mask`` [P, Lp] is the prompts' padding mask (1 = token)."""
        self.phase = "rows"
        width = prompt_mask.shape[1]
        self.prompt_valid = F.pad(prompt_mask.bool(), (0, _key_width(width) - width))  # as the stored keys
        self.prompt_len = _right_padded_lengths(self.prompt_valid)
        self.suffix_valid = torch.zeros((len(owner), 0), dtype=torch.bool, device=owner.device)
        self.suffix_all_valid = True
        self.slots: torch.Tensor | None = None
        self._identity = torch.arange(len(owner), device=owner.device)
        self._set_owner(owner)

    def _set_owner(self, owner: torch.Tensor) -> None:
        # rows of each prompt as a padded [P, C] table (C = most rows of one prompt) for batched matmuls
        self.owner = owner
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
        self.suffix_valid = torch.cat([self.suffix_valid, valid.bool()], dim=1)
        self.suffix_all_valid = self.suffix_all_valid and bool(valid.all())

    def attend(self, index: int, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Rows-phase attention of layer ``index``'s queries [B, heads, q, d] (its keys/values already
        appended): ``decode_attention`` for a decoding step (one query per row, no padding so far),
        ``_rows_attention`` with the padding mask otherwise. Returns [B, q, heads, d]."""
        layer = self.layers[index]
        decoding = query.shape[2] == 1 and self.suffix_all_valid
        if (decoding and self.decode_kernel is not None and self.prompt_len is not None
                and kernel_supports(query, query.shape[-1], query.shape[1], layer.pk.shape[1])):
            return kernel_attention(self.decode_kernel, query, layer.pk, layer.pv, self.prompt_len, self.owner,
                                    layer.sk, layer.sv, layer.suffix_len, scaling, self.row_slots())
        rows_attention = self.decode_attention if decoding else _rows_attention
        return rows_attention(
            query, layer.pk, layer.pv, layer.sk, layer.sv, self.table, self.row_slot, self.prompt_valid,
            None if decoding else self.suffix_valid, layer.suffix_len, scaling,
        )

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
        for layer in self.layers:
            layer._move(like, _buffer_width(layer.suffix_len + q_len), self.slots)
        self.slots = None

    def materialize(self) -> None:
        """Gather the row buffers down to the live rows' slots, so that buffer row b is batch row b."""
        if self.slots is not None:
            self.select_rows(self._identity[: len(self.owner)])

    def select_rows(self, rows: torch.Tensor, lazy: bool = False) -> None:
        """Keep batch rows ``rows`` (in that order). ``lazy``: by the slot map alone (see the class
        docstring); else the row buffers are copied now and prompts no row continues are dropped."""
        if lazy:
            self.slots = self.row_slots()[rows]
            self.owner = self.owner[rows]
            self.suffix_valid = self.suffix_valid[rows]
            self.table = self.row_slot = None  # the torch path's tables: rebuilt by materialize
            return
        buffer_rows = rows if self.slots is None else self.slots[rows]
        self.slots = None
        owner = self.owner[rows]
        used = torch.unique(owner)
        prompts = None
        if len(used) < self.prompt_valid.shape[0]:
            prompts = used
            remap = torch.full((self.prompt_valid.shape[0],), -1, dtype=torch.long, device=owner.device)
            remap[used] = torch.arange(len(used), device=owner.device)
            owner = remap[owner]
            self.prompt_valid = self.prompt_valid[used]
            self.prompt_len = None if self.prompt_len is None else self.prompt_len[used]
        for layer in self.layers:
            layer.select(buffer_rows, prompts)
        self.suffix_valid = self.suffix_valid[rows]
        self.suffix_all_valid = bool(self.suffix_valid.all())
        self._set_owner(owner)


def _right_padded_lengths(valid: torch.Tensor) -> torch.Tensor | None:
    """Each prompt's token count if ``valid`` [P, L] marks a prefix of each row (right padding, as the
    engine prefills), else None (the decoding kernel needs that shape)."""
    lengths = valid.sum(1)
    prefix = torch.arange(valid.shape[1], device=valid.device)[None, :] < lengths[:, None]
    return lengths if bool((prefix == valid).all()) else None


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
    (PyTorch's CPU bf16 SDPA is ~10x slower than this for one query token). Returns ``[B, q, heads, d]``
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


def _rows_attention(query, pk_t, pv, sk_t, sv, table, row_slot, prompt_valid, suffix_valid, written: int,
                    scaling: float) -> torch.Tensor:
    """The rows phase's attention (see ``shared_prefix_attention``) as a function of tensors only, so
    that it can be compiled: queries [B, heads, q, d] against the prompts' keys ``pk_t`` (transposed:
    [P, kv, d, Lk]) and values ``pv`` and the rows' buffers ``sk_t`` (transposed) and ``sv`` (``written``
    positions of them real). ``suffix_valid`` [B, >= written]
    marks real continuation positions; None means decoding (one query per row, no padding), where
    only the unwritten tail needs masking. Returns [B, q, heads, d] in the query's dtype."""
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
    m2, l2, o2 = _softmax_parts(s2.reshape(bsz, kv_heads, groups * q_len, width), sv, maybe_empty=q_len > 1)
    # 3. merge
    peak = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - peak), torch.exp(m2 - peak)
    out = (o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)
    out = out.reshape(bsz, heads, q_len, dim)
    return out.transpose(1, 2).to(query.dtype, memory_format=torch.contiguous_format).contiguous()


AttentionInterface.register(ATTENTION, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` failed and the engine runs the function eagerly instead (``compiled_or_eager``)."""


def cache_argument(forward) -> str:
    """The keyword under which ``forward`` (a transformers model's or decoder's) takes its KV cache:
    ``cache`` in the transformers releases that deprecate ``past_key_values`` (5.24 does, removal announced
    for 5.40), ``past_key_values`` in older ones. Read from the signature, so no warning is ever raised."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def compiled_or_eager(fn):
    """``torch.compile(fn, dynamic=True)``, falling back to ``fn`` itself (with a warning, for good) if
    compiling fails, e.g. on a machine without the C++ compiler inductor needs on a CPU.

    For decoding's attention: inductor fuses its ~30 small elementwise operations per layer into a
    few loops, at the price of compiling once per process (~10-20 s; a couple of recompiles as shapes
    first vary). Measured on 2 CPU cores: a 256-row SmolLM2 decoding step ~10% faster, whole benchmark
    stages between 10% slower and 14% faster across two runs (within the machine's noise), so it is
    off by default."""
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


# ---------------------------------------------------------------------- sampling


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
    the whole row (on a CPU, ~5x cheaper for 16 of 49k). Columns past the last whole block are always
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
    serves it. (Actor text from SmolLM2 at T=0.8, top_p=0.95: ~79% of nuclei fit in 16 tokens, ~94%
    in 64, ~99.98% in 1024.)

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


# ---------------------------------------------------------------------- engine


class HFEngine(Engine):
    """A transformers causal LM on one device, with its own decoding loop. See the module docstring."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        threads: int = 0,
        model=None,
        tokenizer=None,
        compile: bool = False,
        fused_decoder: bool = True,
        decode_kernel: bool = True,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.dtype = pick_dtype(dtype, self.device) if model is None else next(model.parameters()).dtype
        self.batch_size = batch_size
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        self.model.to(self.device).eval()
        self._model_cache_arg = cache_argument(self.model.forward)
        self._decoder_cache_arg = cache_argument(self.model.get_decoder().forward)
        self.stop_ids = self._stop_ids()
        self.row_buffers = RowBufferPool()  # decoding's per-row keys/values, reused by every batch
        self._decode_attention = compiled_or_eager(_rows_attention) if compile else _rows_attention
        # the C++ extension (decode_kernel.py), built on first use, on a CPU for bf16 (attention, layer
        # kernels, sampler) and float32 (its sampler only); None: batched matmuls and torch's sampler
        self._decode_kernel = None
        if decode_kernel and self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.float32):
            self._decode_kernel = load_decode_kernel()
        # the C++ sampler reads the LM head's own output (bf16: no float32 copy); else sample_next in torch
        self._sample_kernel = self._decode_kernel is not None and (
            self.model.get_output_embeddings().weight.dtype in (torch.bfloat16, torch.float32))
        # decoding steps straight from fused weights where the architecture allows (fused_decoder.py)
        self.fused = None
        if fused_decoder and unsupported_reason(self.model) is None:
            self.fused = FusedDecoder(self.model, compiled_or_eager if compile else None, kernels=self._decode_kernel)
        self._stop_tensor = torch.tensor(self.stop_ids, dtype=torch.long, device=self.device)
        # Tests set a list here to record, per decoding step, (row ids, sampled tokens, log-softmax).
        self.trace: list | None = None

    def _stop_ids(self) -> list[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(gen_eos)
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
                ids.add(tid)
        return sorted(ids)

    # ------------------------------------------------------------------ helpers

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the chat-templated conversation, ending with the assistant turn's header."""
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def _pad_left(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, sizes: Sequence[int], costs: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of about ``batch_size`` sequences, shortest prompts first."""
        order = sorted(range(len(sizes)), key=lambda i: costs[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        seqs = 0
        for i in order:
            if cur and seqs + sizes[i] > self.batch_size:
                batches.append(cur)
                cur, seqs = [], 0
            cur.append(i)
            seqs += sizes[i]
        if cur:
            batches.append(cur)
        return batches

    @contextmanager
    def _engine_attention(self):
        """Run the model with ``shared_prefix_attention``; its own attention setting is restored after,
        so a model shared with training is left as it was."""
        config = self.model.config
        saved = config._attn_implementation
        config._attn_implementation = ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = saved

    def _forward(self, cache: SharedPrefixCache, **inputs) -> torch.Tensor:
        """Last-position float32 logits of ``model(**inputs)`` with the engine's attention."""
        with self._engine_attention():
            out = self.model(**{self._model_cache_arg: cache}, shared_cache=cache, use_cache=True, logits_to_keep=1,
                             **inputs)
        return out.logits[:, -1, :].float()

    def _logit_buffers(self, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """[rows, vocab] buffers of the decoding steps, in memory the engine reuses across batches: the
        LM head's float32 output (what ``sample_next`` reads and overwrites), its output in the head's
        own dtype for a lower-precision model (else None), and ``sample_next``'s float32 probabilities.
        The C++ sampler reads the head's own output: no float32 copy of a bf16 one, no probabilities
        (those None)."""
        weight = self.model.get_output_embeddings().weight
        shape = (rows, weight.shape[0])
        low = None if weight.dtype == torch.float32 else self.row_buffers.view(("logits", "low", 0), shape, weight)
        f32 = probs = None
        if low is None or not self._sample_kernel:
            f32 = self.row_buffers.view(("logits", "float32", 0), shape, weight.new_empty(0, dtype=torch.float32))
        if not self._sample_kernel:
            probs = self.row_buffers.view(("logits", "probs", 0), shape, f32)
        return f32, low, probs

    def _sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                generator: torch.Generator, scratch: torch.Tensor | None) -> torch.Tensor:
        """Each row's next token: the C++ sampler on the head's own logits (one float64 uniform per row
        drawn from ``generator``), else ``sample_next`` in place on float32 logits."""
        if self._sample_kernel:
            uniforms = torch.rand(len(logits), generator=generator, dtype=torch.float64, device=logits.device)
            return self._decode_kernel.sample_next(logits, temperature, top_p, uniforms)
        return sample_next(logits, temperature, top_p, generator, inplace=True, scratch=scratch)

    def _decode(self, cache: SharedPrefixCache, nxt: torch.Tensor, pos: torch.Tensor,
                buffers: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
        """One decoding step: logits [B, V] of each row's next token, written into ``buffers`` (the
        plain LM head as a matmul, as in ``_prefill``): in the head's dtype for the C++ sampler, else
        float32. The decoder runs as ``FusedDecoder`` where the model allows, else through transformers'
        forward."""
        if self.fused is not None:
            hidden = self.fused.step(cache, nxt, pos)
        else:
            with self._engine_attention():
                hidden = self.model.get_decoder()(
                    input_ids=nxt[:, None], position_ids=pos[:, None], **{self._decoder_cache_arg: cache},
                    use_cache=True, shared_cache=cache,
                ).last_hidden_state[:, -1]
        weight = self.model.get_output_embeddings().weight.t()
        f32, low, _ = buffers
        b = hidden.shape[0]
        if low is None:
            return torch.mm(hidden, weight, out=f32[:b])
        logits = torch.mm(hidden, weight, out=low[:b])
        return logits if f32 is None else f32[:b].copy_(logits)

    def _prefill(self, prompts: Sequence[list[int]], extra: int):
        """Run the prompts once, RIGHT-padded (causal attention needs no mask then: SDPA skips the upper
        triangle). Returns (each prompt's last-token logits fp32, cache, padding mask, last positions).

        ``extra``: the most continuation positions a row will need (row buffers are reserved for it).
        Logits come from the decoder's hidden state at each prompt's own last token through the output
        embedding (assumes a plain LM head: no logit scaling or soft-capping, as in Llama/Qwen/Mistral)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            mask[i, : len(p)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = torch.arange(width, device=self.device).expand(len(prompts), width)
        last = mask.sum(1) - 1
        cache = SharedPrefixCache(self.model.config.num_hidden_layers, extra, self.row_buffers, self._decode_attention,
                                  self._decode_kernel)
        with self._engine_attention():
            hidden = self.model.get_decoder()(
                input_ids=ids, position_ids=pos, **{self._decoder_cache_arg: cache}, use_cache=True,
                shared_cache=cache,
            ).last_hidden_state
        rows = torch.arange(len(prompts), device=self.device)
        logits = self.model.get_output_embeddings()(hidden[rows, last]).float()
        return logits, cache, mask, last

    # ------------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        prompts = [self.render(r.messages) for r in requests]
        for batch in self._batches([r.n for r in requests], [len(p) for p in prompts]):
            yield from self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])

    def _generate_batch(
        self, reqs: Sequence[GenerationRequest], prompts: Sequence[list[int]]
    ) -> Iterator[GenerationOutput]:
        dev = self.device
        generator = torch.Generator(device=dev).manual_seed(batch_seed([r.seed for r in reqs]))
        max_new = max(r.sampling.max_tokens for r in reqs)
        if self.fused is not None:
            self.fused.refresh()  # the model may have been trained since the last batch
        logits, cache, mask, last_pos = self._prefill(prompts, max_new)

        # One row per sample: row j continues prompt owner[j] (the prompt's keys are never copied).
        owner = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor([r.n for r in reqs])).to(dev)
        cache.start_rows(owner, mask)
        lazy = self.fused is not None and self.fused.kernels_apply(cache)  # rows leave by the slot map
        logits, last_pos = logits[owner], last_pos[owner]
        if self._sample_kernel:  # in the head's dtype, as the decoding steps hand logits over (exact)
            logits = logits.to(self.model.get_output_embeddings().weight.dtype)
        temperature = torch.tensor([reqs[o].sampling.temperature for o in owner.tolist()], dtype=torch.float32, device=dev)
        top_p = torch.tensor([reqs[o].sampling.top_p for o in owner.tolist()], dtype=torch.float32, device=dev)
        budget = torch.tensor([reqs[o].sampling.max_tokens for o in owner.tolist()], device=dev)

        rows = len(owner)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        alive = torch.arange(rows, device=dev)  # original row index of each batch row
        live = torch.ones(rows, dtype=torch.bool, device=dev)  # batch rows still generating
        buffers = self._logit_buffers(rows)
        step = 0
        while True:
            logprobs = torch.log_softmax(logits.float(), -1) if self.trace is not None else None
            nxt = self._sample(logits, temperature, top_p, generator, buffers[2])
            step += 1
            stop = torch.isin(nxt, self._stop_tensor)
            done = (stop | (budget <= step)) & live
            idx = live.nonzero().flatten()
            if logprobs is not None:
                self.trace.append((alive[idx].tolist(), nxt[idx].tolist(), logprobs[idx]))
            for r, t, s in zip(alive[idx].tolist(), nxt[idx].tolist(), stop[idx].tolist()):
                tokens[r].append(t)
                finished[r] = s
            live &= ~done
            n_live = int(live.sum())
            if n_live == 0:
                break
            # Finished rows leave the batch. On the C++ kernels' path at once, through the cache's slot
            # map (no copy); elsewhere dropping a row costs a copy of every layer's continuation cache, so
            # a finished row is carried (its tokens ignored) until COMPACT_AT of the batch has finished.
            dropped = len(live) - n_live
            if dropped and (lazy or dropped >= COMPACT_AT * len(live)):
                keep = live.nonzero().flatten()
                cache.select_rows(keep, lazy=lazy)
                alive, nxt, last_pos, live = alive[keep], nxt[keep], last_pos[keep], live[keep]
                temperature, top_p, budget = temperature[keep], top_p[keep], budget[keep]
            last_pos = last_pos + 1
            cache.add_suffix(torch.ones((len(nxt), 1), dtype=torch.bool, device=dev))
            logits = self._decode(cache, nxt, last_pos, buffers)

        start = 0
        for r in reqs:
            texts, counts, fin = [], [], []
            for j in range(start, start + r.n):
                toks = tokens[j][:-1] if finished[j] else tokens[j]
                texts.append(self.tokenizer.decode(toks, skip_special_tokens=True).strip())
                counts.append(len(tokens[j]))
                fin.append(finished[j])
            start += r.n
            yield GenerationOutput(id=r.id, texts=texts, n_tokens=counts, finished=fin)

    def cut_at_stop(self, seq: list[int]) -> tuple[list[int], bool]:
        """Generated tokens up to (not including) the first stop token, and whether one was hit."""
        for j, t in enumerate(seq):
            if t in self.stop_ids:
                return seq[:j], True
        return seq, False

    # ------------------------------------------------------------------ choice probabilities

    def choice_context(self, prefix: str, choices: Sequence[str]) -> tuple[list[int], list[int]]:
        """Context tokens and one token per choice, tokenized the way the text would naturally be.

        ``prefix + choice`` is encoded whole for every choice; the context is their common leading
        tokens and each choice must add exactly one token. This absorbs a trailing space of the
        prefix into the choice token where the tokenizer merges them (``"Judgment " + "A"`` is
        ``"ĠJudgment" "ĠA"`` in BPE, not ``"ĠJudgment" "Ġ" "A"``), so the model is asked the question
        in the form it has seen in training.
        """
        encoded = [self.tokenizer.encode(prefix + c, add_special_tokens=False) for c in choices]
        common = 0
        shortest = min(len(e) for e in encoded)
        while common < shortest and all(e[common] == encoded[0][common] for e in encoded):
            common += 1
        bad = [c for c, e in zip(choices, encoded) if len(e) != common + 1]
        if bad or common == 0 and prefix:
            raise ValueError(f"choices {list(choices)} are not single tokens after {prefix[-20:]!r}")
        return encoded[0][:common], [e[common] for e in encoded]

    @torch.inference_mode()
    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        """Requests sharing a prompt (e.g. the N judgments of one response) prefill it once."""
        groups: dict[tuple[int, ...], list[int]] = {}
        contexts, tokens = [], []
        for i, r in enumerate(requests):
            context, choice_ids = self.choice_context(r.assistant_prefix, r.choices)
            contexts.append(context)
            tokens.append(choice_ids)
            groups.setdefault(tuple(self.render(r.messages)), []).append(i)
        keys = list(groups)
        sizes = [len(groups[k]) for k in keys]
        costs = [len(k) for k in keys]
        for batch in self._batches(sizes, costs):
            prompts = [list(keys[g]) for g in batch]
            members = [groups[keys[g]] for g in batch]
            suffix_len = max(len(contexts[i]) for m in members for i in m)
            logits, cache, mask, _ = self._prefill(prompts, suffix_len)
            owner = torch.tensor([b for b, m in enumerate(members) for _ in m], device=self.device)
            flat = [i for m in members for i in m]
            last = logits[owner]
            if suffix_len:
                cache.start_rows(owner, mask)
                suf_ids, suf_mask = self._pad_left([contexts[i] for i in flat])
                cache.add_suffix(suf_mask)
                # suffix j of a row is at position len(prompt) + (real suffix tokens before j)
                pos = (mask[owner].sum(1, keepdim=True) + suf_mask.cumsum(-1) - 1).clamp(min=0)
                out = self._forward(cache, input_ids=suf_ids, position_ids=pos)
                has_suffix = torch.tensor([bool(contexts[i]) for i in flat], device=self.device)
                last = torch.where(has_suffix[:, None], out, last)
            logprobs = torch.log_softmax(last, dim=-1)
            for row, i in enumerate(flat):
                p = logprobs[row, tokens[i]].exp()
                p = p / p.sum()
                yield ChoiceOutput(id=requests[i].id, probs=[float(x) for x in p])

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.fused = None
        self.row_buffers.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
