"""DPO in plain PyTorch: the same loss as TRL's DPOTrainer (sigmoid loss), less overhead (docs/method.md §4.1).

Why it exists: on a small CPU, TRL's trainer reached about half of the machine's matmul ceiling on a DPO
step, a hand-written loop about three quarters (issue 6). ``training.backend: native`` selects it;
``tests/test_dpo_native.py`` shows its loss and gradients equal TRL's on the same batch.

What it does, and why it is fast without changing the result:
* tokenizes each pair exactly as TRL 1.16 does: chat template of the prompt with the generation
  prompt, of prompt+chosen and prompt+rejected; the completion starts where they diverge; the joined
  sequence is truncated to ``max_length`` keeping its start (a pair whose prompt fills ``max_length`` is
  dropped, as TRL does); a plain-text prompt gets the eos token appended to its completions;
* computes the reference model's log-probabilities ONCE for all pairs before training (the reference
  is the policy's starting weights; no second model is kept in memory while training);
* within one optimizer step (``batch_size * grad_accum`` pairs, the global batch) it re-cuts the
  micro-batches by length, so each forward pads chosen and rejected sequences of similar length only;
  the gradient of the global batch does not depend on how it is cut;
* runs each pair as one row where the model's attention takes a custom mask (sdpa, eager:
  ``pair_logps``): the prompt once, then the chosen completion, then the rejected one, masked from the
  chosen tokens and positioned after the prompt, so a judge pair's ~500-token prompt is not run twice
  (judge-pair steps ~1.8x faster and ~1 GiB smaller on the tiny run, ``docs/performance.md``); the
  log-probs equal two rows per pair up to float rounding (``tests/test_dpo_native.py``);
* runs the LM head only at completion positions (the judge pairs' ~500-token prompts need no logits),
  and in the gradient-free reference pass in slices of ``HEAD_CHUNK`` positions with logsumexp, so no
  [tokens, vocab] tensor is ever whole there; with gradients, the log-probabilities of the targets come
  from the logits and their log-sum-exp only, and the backward writes the logits' gradient into the
  logits themselves (``_TargetLogps``: no full-size log-softmax, zero-filled gradient or softmax backward);
* frees the gradients after each optimizer step (``zero_grad(set_to_none=True)``), so a forward's
  activations never sit beside a full set of them (0.5 GB for SmolLM2-135M in float32; in a run,
  where the hf engine's heap setting ``keep_freed_memory`` stays in force, the next step reuses the
  freed buffers without page faults), and uses PyTorch's fused AdamW (one pass over the parameters instead of ten elementwise
  ones, memory-bound on a CPU);
* log-probabilities and the loss are float32 (bf16 margins moved by up to 1.5 nats in our tests);
* bounds the memory a micro-batch's saved activations take (``activation_budget``): when the decoder
  layers' activations for backward would exceed it, the first layers run under activation
  checkpointing (their activations recomputed in backward, bit for bit the same, so the loss and the
  gradients do not change: ``tests/test_dpo_native_memory.py``), just enough of them to fit; a
  micro-batch that does not fit even with every layer checkpointed (long judge pairs) runs in halves
  (``split_to_budget``: the same gradients up to the sum's rounding). Without it, a
  micro-batch of four ~600-token judge pairs saved ~7.6 GiB of activations on SmolLM2-135M, which was
  most of the tiny run's peak memory and, freshly page-faulted, much of its first step's time
  (``docs/performance.md``, "Iteration costs: DPO warm-up and memory").

Optimizer and schedule as transformers' Trainer uses them for DPOTrainer: AdamW (betas 0.9/0.999,
eps 1e-8, no weight decay), ``get_scheduler(lr_scheduler, warmup)``, gradient norm clipped at 1.0.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

HEAD_CHUNK = 256  # completion positions per LM-head slice when no gradient is needed (50 MB of logits)
ACTIVATION_BUDGET = 128 << 20  # bytes of decoder-layer activations a micro-batch may keep for backward


@dataclass
class PairTokens:
    """One preference pair as token ids: the shared prompt and each completion's ids after it."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def sequences(self) -> list[tuple[list[int], int]]:
        """(ids, prompt length) of prompt+chosen and prompt+rejected."""
        return [(self.prompt + self.chosen, len(self.prompt)), (self.prompt + self.rejected, len(self.prompt))]


def _chat_ids(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer, pair: dict[str, Any], max_length: int | None) -> PairTokens | None:
    """TRL 1.16's DPO tokenization of one pair (see module docstring); None if the prompt fills max_length."""
    prompt, chosen, rejected = pair["prompt"], pair["chosen"], pair["rejected"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        p = tokenizer(prompt)["input_ids"]
        pc = tokenizer(prompt + chosen)["input_ids"]
        pr = tokenizer(prompt + rejected)["input_ids"]
    else:
        if isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        p = _chat_ids(tokenizer, list(prompt), True)
        pc = _chat_ids(tokenizer, list(prompt) + list(chosen), False)
        pr = _chat_ids(tokenizer, list(prompt) + list(rejected), False)
    cut = min(_common_prefix(p, pc), _common_prefix(p, pr))
    if max_length is not None and cut >= max_length:
        return None
    c, r = pc[cut:], pr[cut:]
    if max_length is not None:
        c, r = c[: max_length - cut], r[: max_length - cut]
    return PairTokens(prompt=p[:cut], chosen=c, rejected=r)


def sequence_logps(model, seqs: Sequence[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Sum of float32 log p(token) over each sequence's completion tokens; one right-padded forward.

    The decoder runs over all positions; the LM head and softmax only over positions that predict a
    completion token.
    """
    width = max(len(ids) for ids, _ in seqs)
    device = next(model.parameters()).device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, _) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    # position t predicts token t+1; keep t in [prompt_len - 1, len - 2]
    rows, cols, owner = [], [], []
    for i, (s, p) in enumerate(seqs):
        rows.extend([i] * (len(s) - p))
        cols.extend(range(p - 1, len(s) - 1))
        owner.extend([i] * (len(s) - p))
    targets = ids[torch.tensor(rows, device=device), torch.tensor(cols, device=device) + 1]
    return _completion_logps(model, hidden, rows, cols, targets, owner, len(seqs))


def packs_pairs(model) -> bool:
    """Whether ``pair_logps`` can run ``model``: its attention takes a custom 4D mask (sdpa, eager)."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def pair_logps(model, items: Sequence[PairTokens], pad_id: int) -> torch.Tensor:
    """[pairs, 2] float32 log-prob sums of (chosen, rejected), each pair packed in one right-padded row:
    its prompt once, then the chosen completion, then the rejected one. A 4D attention mask keeps the
    rejected tokens from seeing the chosen ones, and their position ids continue the prompt's, so each
    completion's log-probs are those of its own prompt+completion row (``sequence_logps``; equal up to
    float rounding, ``tests/test_dpo_native.py``) over p + c + r positions instead of 2p + c + r: a judge
    pair's ~500-token prompt runs once, not twice. Padded positions attend only to themselves.
    Assumes ``packs_pairs(model)``."""
    device = next(model.parameters()).device
    lengths = [len(t.prompt) + len(t.chosen) + len(t.rejected) for t in items]
    width = max(lengths)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(items), width), dtype=torch.long)
    allowed = torch.ones((width, width), dtype=torch.bool).tril().repeat(len(items), 1, 1)
    rows, cols, owner = [], [], []
    for i, (t, n) in enumerate(zip(items, lengths, strict=True)):
        p, c = len(t.prompt), len(t.chosen)
        ids[i, :n] = torch.tensor(t.prompt + t.chosen + t.rejected)
        pos[i, : p + c] = torch.arange(p + c)
        pos[i, p + c : n] = torch.arange(p, n - c)
        allowed[i, p + c :, p : p + c] = False  # the rejected completion does not see the chosen one
        allowed[i, n:] = False
        allowed[i, range(n, width), range(n, width)] = True  # padding: itself only (no empty row)
        # chosen token k is predicted at p - 1 + k; rejected token 0 at p - 1, token k at p + c - 1 + k
        rows.extend([i] * (c + len(t.rejected)))
        cols.extend(range(p - 1, p + c - 1))
        cols.extend([p - 1, *range(p + c, n - 1)][: len(t.rejected)])  # none for an empty completion
        owner.extend([2 * i] * c + [2 * i + 1] * len(t.rejected))
    if model.config._attn_implementation == "sdpa":
        mask = allowed[:, None].to(device)
    else:  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None].to(device)
    ids, pos = ids.to(device), pos.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    targets = torch.cat([torch.tensor(t.chosen + t.rejected, dtype=torch.long) for t in items]).to(device)
    return _completion_logps(model, hidden, rows, cols, targets, owner, 2 * len(items)).view(-1, 2)


def _completion_logps(model, hidden: torch.Tensor, rows: list[int], cols: list[int], targets: torch.Tensor,
                      owner: list[int], n_out: int) -> torch.Tensor:
    """Sum into ``n_out`` slots (``owner``) of log p(target) at the hidden states ``hidden[rows, cols]``:
    the LM head and softmax run only at those positions."""
    device = hidden.device
    states = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    head = model.get_output_embeddings()
    if torch.is_grad_enabled():
        token_logps = _TargetLogps.apply(head(states).float(), targets)
    else:  # no backward to feed: logits in slices, so no [tokens, vocab] tensor is ever whole
        token_logps = torch.cat([
            _token_logps(head(states[k : k + HEAD_CHUNK]).float(), targets[k : k + HEAD_CHUNK])
            for k in range(0, len(targets), HEAD_CHUNK)
        ])
    out = torch.zeros(n_out, dtype=torch.float32, device=device)
    return out.index_add(0, torch.tensor(owner, device=device), token_logps)


def micro_batch_logps(model, items: Sequence[PairTokens], pad_id: int) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) log-probs of a micro-batch: packed (``pair_logps``) where the
    model's attention takes a custom mask, else as two rows per pair (``sequence_logps``)."""
    if packs_pairs(model):
        return pair_logps(model, items, pad_id)
    return sequence_logps(model, [s for t in items for s in t.sequences()], pad_id).view(-1, 2)


def micro_batch_positions(model, items: Sequence[PairTokens]) -> int:
    """Padded positions the decoder runs for a micro-batch (``micro_batch_logps``' layout)."""
    if packs_pairs(model):
        return len(items) * max(len(t.prompt) + len(t.chosen) + len(t.rejected) for t in items)
    return 2 * len(items) * max(len(t.prompt) + max(len(t.chosen), len(t.rejected)) for t in items)


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, without materialising the log-softmax."""
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


class _TargetLogps(torch.autograd.Function):
    """``log_softmax(logits)[row, target]`` with a backward that works in the logits' own memory.

    The plain way (``log_softmax(...).gather``) writes a [tokens, vocab] log-softmax, then in backward a
    zero-filled [tokens, vocab] gradient, a scatter and a full-size softmax backward: on a CPU, ~0.8 s
    per micro-batch of 800 completion tokens. Here the forward keeps only each row's log-sum-exp
    (computed in ``HEAD_CHUNK`` slices), and the backward turns the saved logits into their gradient
    in place, ``-g * softmax + g * onehot(target)`` (~0.35 s). Assumes, and is only used where, the
    logits are a fresh tensor nothing else reads (the LM head's output, whose own backward needs only
    its input and weight). Its values and gradients equal the plain way's (``tests/test_dpo_native``).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.cat([torch.logsumexp(logits[k : k + HEAD_CHUNK], dim=-1) for k in range(0, len(logits), HEAD_CHUNK)])
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(1, targets[:, None]).squeeze(1) - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = logits.sub_(lse[:, None]).exp_().mul_(-grad_out[:, None])
        grad[torch.arange(len(targets), device=grad.device), targets] += grad_out
        return grad, None


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss -log σ(β((c - c_ref) - (r - r_ref))), and the implicit rewards."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


def _micro_batches(pairs: Sequence[int], items: Sequence[PairTokens], size: int) -> list[list[int]]:
    """The pairs of one global batch, sorted by length and cut into micro-batches of ``size`` pairs."""
    order = sorted(pairs, key=lambda i: max(len(items[i].chosen), len(items[i].rejected)) + len(items[i].prompt))
    return [order[k : k + size] for k in range(0, len(order), size)]


@torch.no_grad()
def reference_logps(model, items: Sequence[PairTokens], batch_size: int, pad_id: int) -> torch.Tensor:
    """[n_pairs, 2] (chosen, rejected) log-probs under ``model``, computed once in length-sorted batches."""
    out = torch.zeros((len(items), 2), dtype=torch.float32)
    was_training = model.training
    model.eval()
    for batch in _micro_batches(range(len(items)), items, batch_size):
        out[batch] = micro_batch_logps(model, [items[i] for i in batch], pad_id).cpu()
    model.train(was_training)
    return out


def layer_activation_bytes(config, tokens: int, itemsize: int) -> int:
    """Estimated bytes one decoder layer keeps for backward over ``tokens`` (padded) positions: per token,
    10 hidden-sized, 4 key/value-sized and 5 MLP-sized values (norms, projections, rotary, attention
    output; gate, up, activation, product). Fitted to a Llama layer of SmolLM2-135M's shape in float32:
    56.8 KB per token estimated, 57.8 KB measured (``docs/performance.md``)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    return tokens * itemsize * (10 * hidden + 4 * kv + 5 * config.intermediate_size)


def checkpointed_layer_count(n_layers: int, per_layer: int, saved_input: int, budget: int | None) -> int:
    """How many of ``n_layers`` decoder layers must run under activation checkpointing so that what the
    micro-batch keeps for backward fits ``budget`` bytes: a plain layer keeps ``per_layer``, a checkpointed
    one only its input (``saved_input``), plus one layer's activations while it is recomputed in backward.
    0 when everything fits (or ``budget`` is None), ``n_layers`` when even that does not."""
    if budget is None or n_layers * per_layer <= budget:
        return 0
    if per_layer <= saved_input:
        return n_layers
    need = (n_layers + 1) * per_layer - budget  # k layers save (per_layer - saved_input) each
    return min(n_layers, -(-need // (per_layer - saved_input)))


def split_to_budget(micro: list[int], fits) -> list[list[int]]:
    """``micro`` (pairs sorted by length) halved, and its halves halved, until ``fits(part)`` or one pair is
    left. Used where even every layer checkpointed keeps more than the activation budget for backward
    (long judge pairs): the pairs then run as several backward passes into the same gradients, which
    changes the sum's rounding only, and the peak shrinks with the micro-batch."""
    if len(micro) == 1 or fits(micro):
        return [micro]
    half = (len(micro) + 1) // 2
    return split_to_budget(micro[:half], fits) + split_to_budget(micro[half:], fits)


def _checkpointed(forward):
    def run(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@contextmanager
def activation_checkpointing(layers: Sequence[torch.nn.Module], count: int) -> Iterator[None]:
    """Run the first ``count`` of ``layers`` under non-reentrant activation checkpointing inside the block
    (the layer's own forward, recomputed in backward: the same operations on the same inputs, so the same
    bits on a CPU). Instance-level, so the model's own checkpointing settings are left alone."""
    wrapped = list(layers[:count])
    try:
        for layer in wrapped:
            layer.forward = _checkpointed(layer.forward)
        yield
    finally:
        for layer in wrapped:
            if "forward" in layer.__dict__:
                del layer.forward


def _fused_adamw_ok(params: Sequence[torch.Tensor]) -> bool:
    """PyTorch's fused AdamW runs on CPU and CUDA for floating-point parameters on one device type."""
    kinds = {(p.device.type, p.dtype) for p in params}
    return len({d for d, _ in kinds}) == 1 and all(d in ("cpu", "cuda") and t.is_floating_point for d, t in kinds)


def train_dpo_native(
    model,
    tokenizer,
    pairs: Sequence[dict[str, Any]],
    beta: float = 0.1,
    lr: float = 5e-6,
    epochs: float = 1.0,
    batch_size: int = 4,
    grad_accum: int = 8,
    max_length: int | None = 4096,
    warmup_ratio: float = 0.1,
    lr_scheduler: str = "cosine",
    seed: int = 0,
    ref_model=None,
    log_path: str | Path | None = None,
    report_to: Sequence[str] = (),
    activation_budget: int | None = ACTIVATION_BUDGET,
) -> dict[str, Any]:
    """Train ``model`` in place with DPO on ``pairs`` (dicts with prompt: chat messages or str, chosen,
    rejected: str or assistant messages). The reference is ``ref_model`` if given, else ``model``'s
    weights before training (log-probs taken once up front). Returns metrics: loss, rewards, accuracy
    (first and last optimizer step), steps, tokens, runtime and tokens/s.

    Each optimizer step's metrics (``training.common.STEP_KEYS``: loss, rewards, margins, accuracy, the
    learning rate the step used, the gradient norm before clipping, tokens/s of the step) are appended to
    ``log_path`` when given (a fresh ``TrainLog``: a killed round restarts from step 1) and handed to the
    ``report_to`` integrations (``training.common.NativeReporter``; their files go beside ``log_path``).

    ``activation_budget``: bytes of decoder-layer activations a micro-batch may keep for backward; layers
    beyond it are checkpointed (see the module docstring; None: never). Changes memory and time only."""
    from transformers import get_scheduler

    from metareward.training.common import NativeReporter, TrainLog, step_record

    started = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenized = [tokenize_pair(tokenizer, p, max_length) for p in pairs]
    items = [t for t in tokenized if t is not None]
    if not items:
        raise ValueError("no preference pairs to train on (every prompt fills max_length?)")
    ref = reference_logps(ref_model if ref_model is not None else model, items, batch_size, pad_id)
    reference_s = time.perf_counter() - started

    global_batch = batch_size * grad_accum
    steps_per_epoch = math.ceil(len(items) / global_batch)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    warmup = math.ceil(warmup_ratio * total_steps) if warmup_ratio < 1 else int(warmup_ratio)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one pass over the parameters instead of ~10 elementwise ones (memory-bound on a CPU)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                  fused=_fused_adamw_ok(params))
    scheduler = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    rng = random.Random(seed)
    train_log = TrainLog(log_path, resume_step=0) if log_path is not None else None
    reporter = NativeReporter(report_to, Path(log_path).parent if log_path is not None else Path.cwd(), model, tokenizer)
    reporter.begin(total_steps)
    model.train()
    layers = getattr(model.get_decoder(), "layers", [])
    itemsize = next(model.parameters()).element_size()
    checkpointed: list[int] = []
    logs: list[dict[str, float]] = []
    tokens = 0
    order: list[int] = []
    step_times: list[float] = []
    for step in range(1, total_steps + 1):
        step_start = time.perf_counter()
        step_lr = scheduler.get_last_lr()[0]
        step_tokens = 0
        if not order:
            order = list(range(len(items)))
            rng.shuffle(order)
        chunk, order = order[:global_batch], order[global_batch:]
        optimizer.zero_grad(set_to_none=True)  # no gradients held through the forward (see module docstring)
        losses, chosen_r, rejected_r = [], [], []
        def kept(micro: list[int]) -> tuple[int, int]:  # (per layer, per checkpointed layer) bytes
            padded = micro_batch_positions(model, [items[i] for i in micro])
            return (layer_activation_bytes(model.config, padded, itemsize),
                    padded * model.config.hidden_size * itemsize)

        def fits(micro: list[int]) -> bool:  # every layer checkpointed, one recomputed: within the budget
            per_layer, saved = kept(micro)
            return activation_budget is None or len(layers) * saved + per_layer <= activation_budget

        parts = [part for micro in _micro_batches(chunk, items, batch_size) for part in split_to_budget(micro, fits)]
        for micro in parts:
            pairs_in = [items[i] for i in micro]
            step_tokens += sum(len(s) for t in pairs_in for s, _ in t.sequences())
            count = checkpointed_layer_count(len(layers), *kept(micro), activation_budget)
            checkpointed.append(count)
            with activation_checkpointing(layers, count):
                logps = micro_batch_logps(model, pairs_in, pad_id)
                r = ref[micro].to(logps.device)
                loss, cr, rr = dpo_loss(logps[:, 0], logps[:, 1], r[:, 0], r[:, 1], beta)
                (loss.sum() / len(chunk)).backward()
            losses.append(loss.detach())
            chosen_r.append(cr)
            rejected_r.append(rr)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        scheduler.step()
        step_times.append(time.perf_counter() - step_start)
        tokens += step_tokens
        c, r = torch.cat(chosen_r), torch.cat(rejected_r)
        entry = {
            "loss": float(torch.cat(losses).mean()),
            "rewards/chosen": float(c.mean()),
            "rewards/rejected": float(r.mean()),
            "rewards/margins": float((c - r).mean()),
            "rewards/accuracies": float((c > r).float().mean()),
        }
        logs.append(entry)
        record = step_record(step, step / steps_per_epoch, {
            **entry, "learning_rate": step_lr, "grad_norm": grad_norm,
            "tokens_per_s": step_tokens / step_times[-1] if step_times[-1] > 0 else None,
        }, time.perf_counter() - started)
        if train_log is not None:
            train_log.append(record)
        reporter.log(record)
    reporter.end()
    optimizer.zero_grad(set_to_none=True)  # the model is saved next: without its last gradients beside it
    model.eval()
    runtime = time.perf_counter() - started
    return {
        "pairs": len(items),
        "dropped_pairs": len(pairs) - len(items),
        "steps": total_steps,
        "train_loss": sum(entry["loss"] for entry in logs) / len(logs),
        "runtime_s": runtime,
        "reference_s": reference_s,
        "step_s": step_times,
        "checkpointed_layers": checkpointed,  # per micro-batch, in order
        "tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime > 0 else None,
        "precision": str(next(model.parameters()).dtype).replace("torch.", ""),
        "first": logs[0],
        "last": logs[-1],
    }


def train_dpo_native_from_path(
    model_path: str,
    pairs: Sequence[Any],
    out_dir,
    cfg,
    work_dir=None,
    threads: int = 0,
) -> dict[str, Any]:
    """Drop-in for ``metareward.training.dpo.train_dpo`` (same arguments): load, train, save atomically.

    ``pairs`` are ``PreferencePair`` records; ``cfg`` a ``TrainingConfig``. Full fine-tuning only (LoRA
    stays with the TRL backend). No mid-training checkpoints: a killed run restarts the round, whose
    output folder appears only when complete, and its ``train_log.jsonl`` (beside ``out_dir``) starts
    over. ``work_dir`` is unused (kept for the same signature).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.models import save_model_atomic
    from metareward.training.common import train_log_path, use_bf16
    from metareward.training.dpo import to_conversational

    if cfg.method != "full":
        raise ValueError(f"training.method {cfg.method!r} needs training.backend: trl (native trains full models)")
    if threads > 0:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if use_bf16(cfg.precision) else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    rows = [
        {"prompt": r["prompt"], "chosen": r["chosen"][0]["content"], "rejected": r["rejected"][0]["content"]}
        for r in to_conversational(pairs, cfg.shuffle_seed)
    ]
    metrics = train_dpo_native(
        model, tokenizer, rows, beta=cfg.beta, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size,
        grad_accum=cfg.gradient_accumulation, max_length=cfg.max_length, warmup_ratio=cfg.warmup_ratio,
        lr_scheduler=cfg.lr_scheduler, seed=cfg.shuffle_seed, log_path=train_log_path(out_dir),
        report_to=cfg.report_to,
    )
    save_model_atomic(model, tokenizer, out_dir)
    metrics["backend"] = "native"
    return metrics
