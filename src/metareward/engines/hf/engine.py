"""The transformers engine: CPU or one GPU, the default, runs the embedded model offline.

It drives the model's ``forward`` itself instead of calling ``generate``, because the stages' workloads
have a shape ``generate`` wastes compute on: the judge asks for N samples of one ~500-token prompt, and
``num_return_sequences`` prefills that prompt N times. What it does with a stage's requests:

* applies the model's chat template (``add_generation_prompt``) to each request's messages;
* orders requests so that prompts sharing at least ``min_shared`` leading tokens stay together, each
  such family and the lone prompts by length (``sharing_order``), and cuts them into batches of about
  ``batch_size`` sequences (a request with ``n`` samples counts ``n``), so padding stays small;
* shares prefixes across a batch's requests where that computes fewer padded positions
  (``shared_roots``): the common root of a family is prefilled once, each request's remainder runs once
  against it into a row of its own (left-padded, masked; the meta-judge's battles of one response, the
  judge prompts of one question); where requests have several samples, root and remainder then become
  that request's prompt (``SharedPrefixCache.promote_rows``: keys copied, not recomputed), read once per
  decoding step by all its samples (the judge's N judgments of one response);
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
* runs decoding steps' attention through a C++ kernel for bf16 on a CPU (``kernels.py``: one
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

A ``GenerationRequest``'s ``ChoiceFollowUp`` (the constrained score or verdict read after each
sample) is answered from the sample's own cache once its batch has decoded (``_follow_ups``): no
re-prefill of prompt and text. Finished rows with a follow-up are parked instead of dropped on the C++
kernels' path (their buffer rows kept, ``SharedPrefixCache.select_rows(park=True)``), and their contexts
are fed there in one pass per group (``FusedDecoder.kernel_feed``: only the real tokens computed); elsewhere such a
batch carries its finished rows to the end (so its texts may differ from the same batch without
follow-ups: sampling draws per batch row; the same requests still give the same texts).

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

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.engines.hf.attention import (
    ATTENTION,
    compiled_or_eager,
    register_attention,
    rows_attention,
)
from metareward.engines.hf.cache import RowBufferPool, SharedPrefixCache
from metareward.engines.hf.device import keep_freed_memory, pick_device, pick_dtype
from metareward.engines.hf.fused_decoder import FusedDecoder, unsupported_reason
from metareward.engines.hf.kernels import load_decode_kernel
from metareward.engines.hf.sampling import batch_seed, sample_next
from metareward.engines.memory import release_freed_memory
from metareward.engines.tokens import choice_context, cut_at_stop, stop_token_ids

FEED_CHUNK = 64  # positions per forward when rows are fed several known tokens (choice contexts, follow-ups)
FEED_FORWARD_COST = 32  # a forward's fixed cost (weights read, per-layer dispatch) in fed positions: ``feed_groups``
KERNEL_FEED_COST = 20  # a kernel feed's fixed cost in fed positions (rough: ~25 ms against ~1.3 ms a position): ``feed_groups``
KERNEL_COLUMN_COST = 1 / 64  # one more continuation position in a row's buffers (memory, zeroing), in fed positions
COMPACT_AT = 0.25  # off the C++ kernels' path, finished rows leave the batch once they are this fraction of it


def cache_argument(forward) -> str:
    """The keyword under which ``forward`` (a transformers model's or decoder's) takes its KV cache:
    ``cache`` in the transformers releases that deprecate ``past_key_values`` (5.24 does, removal announced
    for 5.40), ``past_key_values`` in older ones. Read from the signature, so no warning is ever raised."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def sharing_order(prompts: Sequence[list[int]], min_shared: int) -> list[int]:
    """The order in which ``generate`` cuts requests into batches: prompts sharing at least
    ``min_shared`` leading tokens with another (e.g. the meta-judge's battles of one response, the judge
    prompts of one question) stay together, so their batch prefills the shared part once
    (``shared_roots``); each such family shortest first, families and lone prompts by their shortest
    prompt (little padding, as plain length order gives). Deterministic: a function of the prompts."""
    lexical = sorted(range(len(prompts)), key=lambda i: prompts[i])
    units: list[list[int]] = []
    for prev, i in zip([None, *lexical], lexical):
        if prev is not None and common_prefix(prompts[prev], prompts[i]) >= min_shared:
            units[-1].append(i)
        else:
            units.append([i])
    units = [sorted(u, key=lambda i: (len(prompts[i]), i)) for u in units]
    units.sort(key=lambda u: (len(prompts[u[0]]), u[0]))
    return [i for u in units for i in u]


def fed_positions(mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded fed tokens (``mask`` [rows, w], 1 = token): row j's first real token at
    ``start[j]``, its padding at 0 (masked; any position would do)."""
    return (start[:, None] + mask.cumsum(-1) - 1).clamp(min=0)


def feed_groups(need: Sequence[int], forward_cost: int = FEED_FORWARD_COST, kernel: bool = False) -> list[list[int]]:
    """Split rows to be fed ``need[i]`` tokens each into feeds, at the least cost in computed positions.

    A feed pads its rows to its widest need, w. Through transformers' forward (``_feed``) the padding is
    computed: a feed costs ``rows * w`` positions plus ``forward_cost`` per forward (``FEED_CHUNK``
    positions each), so where most rows need the few tokens of ``"\nScore: "`` and a few need their
    whole text, those few go to a feed of their own. Through the C++ kernels (``kernel``: ``_feed_kernel``)
    only the rows' own tokens are computed: a feed costs ``sum(need)`` plus ``KERNEL_FEED_COST``, and its
    padding only buffer space: w more positions for every row still waiting (this feed's and the wider
    ones'), ``KERNEL_COLUMN_COST`` each; so one feed, or a few where a few rows need many more tokens.
    Exact minimum over contiguous runs of the rows sorted by need (dynamic programming, O(rows^2)); a
    feed always beats leaving a row to a re-prefill, which computes its prompt too. Returns the feeds,
    each a list of row indices in ascending need, the narrowest feed first (fed first, so that the
    wider feeds' buffer positions are added to the fewest rows)."""
    order = sorted(range(len(need)), key=lambda i: need[i])
    total = [0]  # total[i]: the needs of the i narrowest rows
    for i in order:
        total.append(total[-1] + need[i])
    best = [0.0] * (len(order) + 1)  # best[i]: least cost of the i narrowest rows
    start = [0] * (len(order) + 1)  # where the last feed of that least cost starts
    for i in range(1, len(order) + 1):
        width = need[order[i - 1]]
        if kernel:
            best[i], start[i] = min((best[j] + total[i] - total[j] + KERNEL_FEED_COST
                                     + KERNEL_COLUMN_COST * (len(order) - j) * width, j) for j in range(i))
        else:
            fixed = forward_cost * -(-width // FEED_CHUNK)
            best[i], start[i] = min((best[j] + (i - j) * width + fixed, j) for j in range(i))
    feeds, i = [], len(order)
    while i:
        feeds.append(order[start[i] : i])
        i = start[i]
    return feeds[::-1]


def shared_roots(prompts: Sequence[list[int]], min_shared: int) -> tuple[list[int], list[int]]:
    """Prefix sharing across the requests of one batch: (root group of each prompt, its root length).

    Prompts sharing a long common prefix form a group whose common prefix (the root; capped so that
    every member keeps at least one token of its own, and at least ``min_shared`` tokens) is prefilled
    once; each member's remainder then runs against it. A prompt in no group is its own root, whole
    (remainder empty). How deep the roots reach is chosen: the meta-judge's battles all share the
    rubric, and those of one response also its question and response; cutting at the rubric prefills
    it once but feeds every battle its question and response, cutting deeper prefills the rubric once
    per response but each response once. Every depth at which the lexically sorted prompts' runs
    change is tried (runs of adjacent common prefixes at least that long), and the one that computes
    the smallest padded token rectangle (roots x widest root + requests with a remainder x widest
    remainder) is kept, or no sharing where that computes less (prompts x widest prompt). This is the
    two-level case of the prefix tree vLLM's automatic prefix caching and SGLang's radix attention
    share on GPUs."""
    count = len(prompts)
    whole = [len(p) for p in prompts]
    lexical = sorted(range(count), key=lambda i: prompts[i])
    # in lexical order the common prefix of a run is the least common prefix of its neighbours
    adjacent = [common_prefix(prompts[a], prompts[b]) for a, b in zip(lexical, lexical[1:], strict=False)]
    best = (count * max(whole), list(range(count)), whole)
    for depth in sorted({d for d in adjacent if d >= min_shared}):
        root_of, cut = list(range(count)), list(whole)
        run = [lexical[0]]
        shared = None
        for k, i in enumerate(lexical[1:]):
            if adjacent[k] >= depth:
                run.append(i)
                shared = adjacent[k] if shared is None else min(shared, adjacent[k])
                continue
            _root_run(run, shared, prompts, min_shared, root_of, cut)
            run, shared = [i], None
        _root_run(run, shared, prompts, min_shared, root_of, cut)
        remainders = [w - c for w, c in zip(whole, cut, strict=True)]
        cost = len(set(root_of)) * max(cut) + sum(r > 0 for r in remainders) * max(remainders)
        if cost < best[0]:
            best = (cost, root_of, cut)
    return best[1], best[2]


def _root_run(run: list[int], shared: int | None, prompts: Sequence[list[int]], min_shared: int,
              root_of: list[int], cut: list[int]) -> None:
    """Make the prompts of ``run`` (lexically sorted, common prefix ``shared``) one group rooted at its
    first member, if the root, capped to leave each member a token, is ``min_shared`` tokens or more."""
    if len(run) < 2:
        return
    root = min(shared, min(len(prompts[i]) for i in run) - 1)
    if root >= min_shared:
        for i in run:
            root_of[i], cut[i] = run[0], root


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
        min_shared: int = 64,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.dtype = pick_dtype(dtype, self.device) if model is None else next(model.parameters()).dtype
        self.batch_size = batch_size
        self.min_shared = min_shared  # leading tokens requests must share to be prefilled once (shared_roots)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        self.model.to(self.device).eval()
        register_attention()  # the model runs it only inside _engine_attention
        self._model_cache_arg = cache_argument(self.model.forward)
        self._decoder_cache_arg = cache_argument(self.model.get_decoder().forward)
        self.stop_ids = stop_token_ids(self.tokenizer, generation_eos=getattr(self.model.generation_config, "eos_token_id", None))
        self.row_buffers = RowBufferPool()  # decoding's per-row keys/values, reused by every batch
        self._decode_attention = compiled_or_eager(rows_attention) if compile else rows_attention
        # the C++ extension (kernels.py), built on first use, on a CPU for bf16 (attention, layer
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

    def _batches(self, sizes: Sequence[int], costs: Sequence[int], order: Sequence[int] | None = None) -> list[list[int]]:
        """Indices grouped into batches of about ``batch_size`` sequences, in ``order`` (default:
        shortest prompts first)."""
        order = sorted(range(len(sizes)), key=lambda i: costs[i]) if order is None else order
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
        order = sharing_order(prompts, self.min_shared)
        for batch in self._batches([r.n for r in requests], [len(p) for p in prompts], order):
            yield from self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])

    def _generate_batch(
        self, reqs: Sequence[GenerationRequest], prompts: Sequence[list[int]]
    ) -> Iterator[GenerationOutput]:
        dev = self.device
        generator = torch.Generator(device=dev).manual_seed(batch_seed([r.seed for r in reqs]))
        max_new = max(r.sampling.max_tokens for r in reqs)
        if self.fused is not None:
            self.fused.refresh()  # the model may have been trained since the last batch
        # One row per sample: row j continues request owner[j]'s prompt (whose keys are never copied).
        owner = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor([r.n for r in reqs])).to(dev)
        root_of, cut = shared_roots(prompts, self.min_shared)
        roots = sorted(set(root_of))
        root_prompts = [prompts[g][: cut[g]] for g in roots]  # a group's root is its first member's cut
        remainders = [p[c:] for p, c in zip(prompts, cut, strict=True)]
        logits, cache, mask, _ = self._prefill(root_prompts, max_new + max(len(x) for x in remainders))
        if any(remainders):
            # Prefix sharing across requests: each root was prefilled once above; every request's own
            # remainder runs once against it (into a row of its own). Where requests have several
            # samples, root and remainder then become the request's prompt (``promote_rows``: copied,
            # not recomputed), read once for all its samples; a single sample keeps its row (copying
            # the root for it would only add memory traffic).
            request_root = torch.tensor([roots.index(g) for g in root_of], device=dev)
            cache.start_rows(request_root, mask)
            fed = self._feed(cache, remainders, torch.tensor(cut, device=dev))
            has = torch.tensor([bool(x) for x in remainders], device=dev)
            logits = torch.where(has[:, None], fed, logits[request_root])[owner]
            if len(owner) > len(reqs):
                mask = cache.promote_rows()
                cache.capacity = max_new  # the samples' row buffers hold their own tokens only
                cache.start_rows(owner, mask)
            else:  # one sample per request: it keeps its remainder in its row, the roots stay shared
                cache.select_rows(owner)
        else:
            logits = logits[owner]
            cache.start_rows(owner, mask)
        remainder_valid = cache.suffix_valid.clone()  # [rows, fed positions]: a row's own remainder
        prompt_len = torch.tensor([len(p) for p in prompts], device=dev)[owner]  # each row's whole prompt
        last_pos = prompt_len - 1
        lazy = self.fused is not None and self.fused.kernels_apply(cache)  # rows leave by the slot map
        if self._sample_kernel:  # in the head's dtype, as the decoding steps hand logits over (exact)
            logits = logits.to(self.model.get_output_embeddings().weight.dtype)
        temperature = torch.tensor([reqs[o].sampling.temperature for o in owner.tolist()], dtype=torch.float32, device=dev)
        top_p = torch.tensor([reqs[o].sampling.top_p for o in owner.tolist()], dtype=torch.float32, device=dev)
        budget = torch.tensor([reqs[o].sampling.max_tokens for o in owner.tolist()], device=dev)

        rows = len(owner)
        # rows whose follow-up is read from their own cache after decoding: kept (parked) when they finish
        follow = [r for r, o in enumerate(owner.tolist()) if reqs[o].follow_up is not None]
        parked: list[int] = []  # original rows in the cache's parking order (lazy path)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        alive = torch.arange(rows, device=dev)  # original row index of each batch row
        live = torch.ones(rows, dtype=torch.bool, device=dev)  # batch rows still generating
        buffers = self._logit_buffers(rows)
        step = 0
        while True:
            nxt = self._sample(logits, temperature, top_p, generator, buffers[2])
            step += 1
            stop = torch.isin(nxt, self._stop_tensor)
            done = (stop | (budget <= step)) & live
            idx = live.nonzero().flatten()
            for r, t, s in zip(alive[idx].tolist(), nxt[idx].tolist(), stop[idx].tolist()):
                tokens[r].append(t)
                finished[r] = s
            live &= ~done
            n_live = int(live.sum())
            if n_live == 0:
                break
            # Finished rows leave the batch. On the C++ kernels' path at once, through the cache's slot
            # map (no copy; parked for their follow-ups); elsewhere dropping a row costs a copy of every
            # layer's continuation cache, so a finished row is carried (its tokens ignored) until
            # COMPACT_AT of the batch has finished, or to the end where follow-ups will read it.
            dropped = len(live) - n_live
            if dropped and (lazy or (dropped >= COMPACT_AT * len(live) and not follow)):
                keep = live.nonzero().flatten()
                if lazy and follow:
                    parked += alive[~live].tolist()
                cache.select_rows(keep, lazy=lazy, park=lazy and bool(follow))
                alive, nxt, last_pos, live = alive[keep], nxt[keep], last_pos[keep], live[keep]
                temperature, top_p, budget = temperature[keep], top_p[keep], budget[keep]
            last_pos = last_pos + 1
            cache.add_suffix(torch.ones((len(nxt), 1), dtype=torch.bool, device=dev))
            logits = self._decode(cache, nxt, last_pos, buffers)

        texts = [self.tokenizer.decode(t[:-1] if f else t, skip_special_tokens=True).strip()
                 for t, f in zip(tokens, finished, strict=True)]
        follow_probs: dict[int, list[float]] = {}
        if follow:
            if lazy:
                cache.select_rows(alive[:0], lazy=True, park=True)  # the last rows to finish
                parked += alive.tolist()
            follow_probs = self._follow_ups(cache, [reqs[o] for o in owner.tolist()], follow, tokens, texts,
                                            prompt_len, remainder_valid, parked if lazy else None)
        start = 0
        for r in reqs:
            samples = range(start, start + r.n)
            start += r.n
            yield GenerationOutput(id=r.id, texts=[texts[j] for j in samples], n_tokens=[len(tokens[j]) for j in samples],
                                   finished=[finished[j] for j in samples],
                                   choice_probs=[follow_probs[j] for j in samples] if r.follow_up else None)

    def _follow_ups(self, cache: SharedPrefixCache, row_requests: Sequence[GenerationRequest], follow: list[int],
                    tokens: list[list[int]], texts: list[str], prompt_len: torch.Tensor,
                    remainder_valid: torch.Tensor, parked: list[int] | None) -> dict[int, list[float]]:
        """Each follow-up row's choice probabilities, read from its own cache after decoding.

        Row r's cache holds its prompt and its sampled tokens but the last (the cut or stop token is
        never fed). The follow-up's context (``choice_context`` of ``follow_up.prefix(text)``, what
        ``choice_probs`` would feed) agrees with those tokens up to their longest common prefix, so the
        positions after it are masked and only the rest of the context is fed (at least its last token,
        whose logits are read): typically the few tokens of ``"\nScore: "``, the whole text where
        decoding and re-encoding it differ at its start. Rows are fed in groups of similar width
        (``feed_groups``): each group is unparked, fed, and dropped, the rest staying parked. On the C++
        kernels' path a group is fed in one ``_feed_kernel`` pass (no buffer copied, no padding
        computed), else through ``_feed``'s batched forwards.
        ``parked``: the rows in the cache's parking order (the lazy path), None when the batch still
        holds every row in order (the path that never compacts with follow-ups pending: all are
        parked here). ``prompt_len``: each row's whole prompt length; ``remainder_valid`` [rows, R]: the
        real positions of the prompt remainder a row's buffers start with (prefix sharing across
        requests of one sample each; R = 0 without, or where ``promote_rows`` made it part of the
        prompt), its sampled tokens following at R."""
        contexts, choice_ids, keep = {}, {}, {}
        for r in follow:
            follow_up = row_requests[r].follow_up
            context, ids = self.choice_context(follow_up.prefix(texts[r]), follow_up.choices)
            # the last context token is always fed: its logits are the ones read
            contexts[r], choice_ids[r] = context, ids
            keep[r] = common_prefix(tokens[r][:-1], context[: len(context) - 1])
        lazy = parked is not None  # the C++ kernels' path: groups fed by kernel_feed
        need = [len(contexts[r]) - keep[r] for r in follow]
        groups = feed_groups(need, kernel=lazy)
        out: dict[int, list[float]] = {}
        if parked is None:
            parked = list(range(len(cache.owner)))
            cache.select_rows(cache.owner[:0], lazy=True, park=True)
        offset = remainder_valid.shape[1]
        for n, group in enumerate(groups):
            rows = [follow[k] for k in group]
            written = cache.layers[0].suffix_len  # earlier groups' feeds included, masked for this one
            valid = torch.zeros((len(rows), written), dtype=torch.bool, device=self.device)
            valid[:, :offset] = remainder_valid[rows]
            for k, r in enumerate(rows):
                valid[k, offset : offset + keep[r]] = True
            position = {row: k for k, row in enumerate(parked)}
            cache.unpark(torch.tensor([position[r] for r in rows], device=self.device), valid,
                         keep_rest=n + 1 < len(groups), lazy=lazy)
            chosen = set(rows)
            parked = [row for row in parked if row not in chosen]
            start = prompt_len[rows] + torch.tensor([keep[r] for r in rows], device=self.device)
            feed = self._feed_kernel if lazy else self._feed
            logits = feed(cache, [contexts[r][keep[r]:] for r in rows], start)
            logprobs = torch.log_softmax(logits, dim=-1)
            for k, r in enumerate(rows):
                p = logprobs[k, choice_ids[r]].exp()
                out[r] = [float(x) for x in p / p.sum()]
        return out

    def _feed(self, cache: SharedPrefixCache, seqs: Sequence[list[int]], start: torch.Tensor) -> torch.Tensor:
        """Feed row j (rows phase) the tokens ``seqs[j]`` at positions ``start[j]``, ``start[j] + 1``, ...:
        right-aligned, the left padding masked, ``FEED_CHUNK`` positions per forward (bounding the
        attention scores' memory). Returns each row's float32 logits after its last token (undefined for
        an empty sequence)."""
        ids, mask = self._pad_left(seqs)
        pos = fed_positions(mask, start)
        width = ids.shape[1]
        logits = None
        for a in range(width % FEED_CHUNK - FEED_CHUNK if width % FEED_CHUNK else 0, width, FEED_CHUNK):
            cols = slice(max(a, 0), a + FEED_CHUNK)
            cache.add_suffix(mask[:, cols])
            logits = self._forward(cache, input_ids=ids[:, cols], position_ids=pos[:, cols])
        return logits

    def _feed_kernel(self, cache: SharedPrefixCache, seqs: Sequence[list[int]], start: torch.Tensor) -> torch.Tensor:
        """``_feed`` through the C++ kernels (``FusedDecoder.kernel_feed``): all rows' tokens in one pass
        whose matrix products cover only the real tokens (no padding computed), their attention through
        the decoding kernel, which takes the holes in a follow-up row's mask (the sampled tokens its
        context does not repeat); rows are read and written through the cache's slot map, so unparking
        them gathers no buffer. Assumes ``self.fused.kernels_apply(cache)``."""
        ids, mask = self._pad_left(seqs)
        cache.add_suffix(mask)
        hidden = self.fused.kernel_feed(cache, ids, mask, fed_positions(mask, start))
        return torch.mm(hidden, self.model.get_output_embeddings().weight.t()).float()

    def cut_at_stop(self, seq: list[int]) -> tuple[list[int], bool]:
        """Generated tokens up to (not including) the first stop token, and whether one was hit."""
        return cut_at_stop(seq, self.stop_ids)

    # ------------------------------------------------------------------ choice probabilities

    def choice_context(self, prefix: str, choices: Sequence[str]) -> tuple[list[int], list[int]]:
        """Context tokens and one token per choice (``tokens.choice_context``)."""
        return choice_context(self.tokenizer, prefix, choices)

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
                # suffix j of a row is at position len(prompt) + (real suffix tokens before j)
                out = self._feed(cache, [contexts[i] for i in flat], mask[owner].sum(1))
                has_suffix = torch.tensor([bool(contexts[i]) for i in flat], device=self.device)
                last = torch.where(has_suffix[:, None], out, last)
            logprobs = torch.log_softmax(last, dim=-1)
            for row, i in enumerate(flat):
                p = logprobs[row, tokens[i]].exp()
                p = p / p.sum()
                yield ChoiceOutput(id=requests[i].id, probs=[float(x) for x in p])

    def close(self) -> None:
        """Drop the model, its fused weights and the reused buffers, then hand the freed heap back to the
        OS (``memory.release_freed_memory``): while it ran, the engine kept its peak memory for reuse
        (``keep_freed_memory``), which training in the same process must not inherit."""
        self.model = None  # type: ignore[assignment]
        self.fused = None
        self.row_buffers.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        release_freed_memory()
