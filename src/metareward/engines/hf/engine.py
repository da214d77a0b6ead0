"""The transformers engine: CPU or one GPU, the default, runs the embedded model offline.

It drives the model's ``forward`` itself instead of calling ``generate``, because the stages' workloads
have a shape ``generate`` wastes compute on: the judge asks for N samples of one long prompt, and
``num_return_sequences`` prefills that prompt N times. For each batch of requests (``schedule.py``
decides the batches and which prompts share a prefilled root) it prefills each prompt (or shared root)
once, samples the ``n`` continuations of each against that one copy of its keys and values
(``cache.SharedPrefixCache``), one row per sample (``rows.DecodeRows``), and answers each sample's
``ChoiceFollowUp`` from the sample's own cache after its batch has decoded. Decoding steps of
Llama-architecture models run straight from fused weights (``fused_decoder.py``), in bf16 on a CPU
through C++ kernels (``kernels.py``). Each batch's sampler is seeded from its requests' seeds, so a
given list of requests always yields the same texts (the run loop's resume relies on this).

How and why, step by step: ``docs/DESIGN.md`` (the hf engine). Precision: ``dtype="auto"`` is bf16 on a
CUDA device that supports it and on a CPU with native bf16 instructions, float32 otherwise; softmax,
log-probabilities and sampling are float32.

Assumptions: a decoder-only causal LM with full attention whose ``forward`` takes ``position_ids``,
a KV cache (``cache``, or ``past_key_values`` in older transformers) and ``logits_to_keep`` and whose
attention goes through transformers' ``AttentionInterface`` (Llama, Qwen2, Mistral, SmolLM ...), with a
plain LM head (no logit scaling or soft-capping) and a chat template; each choice is a single token
after the prefix (checked).
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
from metareward.engines.hf.rows import DecodeRows
from metareward.engines.hf.sampling import batch_seed, sample_next
from metareward.engines.hf.schedule import FEED_CHUNK, cut_batches, feed_groups, shared_roots, sharing_order
from metareward.engines.memory import release_freed_memory
from metareward.engines.tokens import choice_context, common_prefix, cut_at_stop, stop_token_ids


def cache_argument(forward) -> str:
    """The keyword under which ``forward`` (a transformers model's or decoder's) takes its KV cache:
    ``cache`` in the transformers releases that deprecate ``past_key_values`` (5.24 does, removal announced
    for 5.40), ``past_key_values`` in older ones. Read from the signature, so no warning is ever raised."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def fed_positions(mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded fed tokens (``mask`` [rows, w], 1 = token): row j's first real token at
    ``start[j]``, its padding at 0 (masked; any position would do)."""
    return (start[:, None] + mask.cumsum(-1) - 1).clamp(min=0)


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
        for batch in cut_batches([r.n for r in requests], [len(p) for p in prompts], self.batch_size, order):
            yield from self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])

    def _generate_batch(
        self, reqs: Sequence[GenerationRequest], prompts: Sequence[list[int]]
    ) -> Iterator[GenerationOutput]:
        """One batch: prefill (roots shared across requests), decode one row per sample to its end, read
        the follow-ups from the rows' own caches, yield one output per request."""
        generator = torch.Generator(device=self.device).manual_seed(batch_seed([r.seed for r in reqs]))
        max_new = max(r.sampling.max_tokens for r in reqs)
        if self.fused is not None:
            self.fused.refresh()  # the model may have been trained since the last batch
        # One row per sample: row j continues request owner[j]'s prompt (whose keys are never copied).
        owner = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor([r.n for r in reqs])).to(self.device)
        logits, cache = self._prefill_shared(prompts, owner, max_new)
        remainder_valid = cache.suffix_valid.clone()  # [rows, fed positions]: a row's own remainder
        prompt_len = torch.tensor([len(p) for p in prompts], device=self.device)[owner]  # each row's whole prompt
        lazy = self.fused is not None and self.fused.kernels_apply(cache)  # rows leave by the slot map
        rows = DecodeRows(reqs, owner, prompt_len, self._stop_tensor, lazy)
        self._decode_rows(rows, cache, logits, generator)
        texts = rows.texts(self.tokenizer)
        follow_probs: dict[int, list[float]] = {}
        if rows.follow:
            follow_probs = self._follow_ups(cache, rows.requests, rows.follow, rows.tokens, texts, prompt_len,
                                            remainder_valid, rows.park_last(cache))
        samples = rows.completions(texts, follow_probs)
        start = 0
        for r in reqs:  # rows are in request order, a request's samples in sample order
            yield GenerationOutput(r.id, tuple(samples[start:start + r.n]))
            start += r.n

    def _prefill_shared(self, prompts: Sequence[list[int]], owner: torch.Tensor,
                        max_new: int) -> tuple[torch.Tensor, SharedPrefixCache]:
        """Prefill a batch's prompts and start one cache row per sample (row j: request ``owner[j]``).
        Returns each row's first logits and the cache.

        Prefix sharing across requests (``schedule.shared_roots``): each root is prefilled once, and every
        request's own remainder runs once against it (into a row of its own). Where requests have several
        samples, root and remainder then become the request's prompt (``promote_rows``: copied, not
        recomputed), read once for all its samples; a single sample keeps its row (copying the root for it
        would only add memory traffic)."""
        dev = self.device
        root_of, cut = shared_roots(prompts, self.min_shared)
        roots = sorted(set(root_of))
        root_prompts = [prompts[g][: cut[g]] for g in roots]  # a group's root is its first member's cut
        remainders = [p[c:] for p, c in zip(prompts, cut, strict=True)]
        logits, cache, mask, _ = self._prefill(root_prompts, max_new + max(len(x) for x in remainders))
        if not any(remainders):
            cache.start_rows(owner, mask)
            return logits[owner], cache
        request_root = torch.tensor([roots.index(g) for g in root_of], device=dev)
        cache.start_rows(request_root, mask)
        fed = self._feed(cache, remainders, torch.tensor(cut, device=dev))
        has = torch.tensor([bool(x) for x in remainders], device=dev)
        logits = torch.where(has[:, None], fed, logits[request_root])[owner]
        if len(owner) > len(prompts):
            mask = cache.promote_rows()
            cache.capacity = max_new  # the samples' row buffers hold their own tokens only
            cache.start_rows(owner, mask)
        else:  # one sample per request: it keeps its remainder in its row, the roots stay shared
            cache.select_rows(owner)
        return logits, cache

    def _decode_rows(self, rows: DecodeRows, cache: SharedPrefixCache, logits: torch.Tensor,
                     generator: torch.Generator) -> None:
        """The decoding loop: sample each live row's next token from ``logits``, record it, let finished
        rows leave (``DecodeRows.leave``), feed the rest one position; until no row is live."""
        if self._sample_kernel:  # in the head's dtype, as the decoding steps hand logits over (exact)
            logits = logits.to(self.model.get_output_embeddings().weight.dtype)
        buffers = self._logit_buffers(len(rows.tokens))
        step = 0
        while True:
            nxt = self._sample(logits, rows.temperature, rows.top_p, generator, buffers[2])
            step += 1
            n_live = rows.record(nxt, step)
            if n_live == 0:
                break
            nxt = rows.leave(cache, nxt, n_live)
            rows.last_pos = rows.last_pos + 1
            cache.add_suffix(torch.ones((len(nxt), 1), dtype=torch.bool, device=self.device))
            logits = self._decode(cache, nxt, rows.last_pos, buffers)

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
        for batch in cut_batches(sizes, costs, self.batch_size):
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
