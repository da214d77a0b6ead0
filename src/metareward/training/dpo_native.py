"""DPO in plain PyTorch: the same loss as TRL's DPOTrainer (sigmoid loss), less overhead (docs/method.md §4.1).

Why it exists: on a small CPU, TRL's trainer reached a smaller share of the machine's matmul ceiling on
a DPO step than a hand-written loop (``docs/performance.md``). ``training.backend: native`` selects it;
``tests/test_dpo_native.py`` shows its loss and gradients equal TRL's on the same batch.

What it does, and why it is fast without changing the result:
* tokenizes each pair exactly as TRL 1.16 does: chat template of the prompt with the generation
  prompt, of prompt+chosen and prompt+rejected; the completion starts where they diverge; the joined
  sequence is truncated to ``max_length`` keeping its start (a pair whose prompt fills ``max_length`` is
  dropped, as TRL does); a plain-text prompt gets the eos token appended to its completions;
* computes the reference model's log-probabilities ONCE for all pairs before training (the reference
  is the policy's starting weights; no second model is kept in memory while training);
* within one optimizer step (``batch_size * gradient_accumulation`` pairs, the global batch) it re-cuts
  the micro-batches by length, so each forward pads chosen and rejected sequences of similar length
  only; the gradient of the global batch does not depend on how it is cut;
* runs each pair as one row where the model's attention takes a custom mask (sdpa, eager:
  ``pair_logps``): the prompt once, then the chosen completion, then the rejected one, masked from the
  chosen tokens and positioned after the prompt, so a judge pair's long prompt is not run twice; the
  log-probs equal two rows per pair up to float rounding (``tests/test_dpo_native.py``);
* runs the LM head only at completion positions (the judge pairs' prompts need no logits), and in the
  gradient-free reference pass in slices of ``HEAD_CHUNK`` positions with logsumexp, so no
  [tokens, vocab] tensor is ever whole there; with gradients, the log-probabilities of the targets come
  from the logits and their log-sum-exp only, and the backward writes the logits' gradient into the
  logits themselves (``_TargetLogps``: no full-size log-softmax, zero-filled gradient or softmax backward);
* frees the gradients after each optimizer step (``zero_grad(set_to_none=True)``), so a forward's
  activations never sit beside a full set of them (in a run, where the hf engine's heap setting
  ``keep_freed_memory`` stays in force, the next step reuses the freed buffers without page faults),
  and uses PyTorch's fused AdamW (one pass over the parameters instead of ten elementwise ones,
  memory-bound on a CPU);
* log-probabilities and the loss are float32 (bf16 moves the margins noticeably);
* bounds the memory a micro-batch's saved activations take (``activation_budget``,
  ``training.activations.MicroBatchPlan``): layers checkpointed, or the micro-batch halved, until it fits.

The loop is cut into its parts: ``_global_batches`` (the shuffled pairs of each optimizer step),
``_accumulate`` (a step's micro-batches: forward, loss, backward), ``dpo_loss``, ``_StepLog`` (the
train log and the ``report_to`` integrations). Optimizer and schedule as transformers' Trainer uses
them for DPOTrainer: AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), ``get_scheduler(lr_scheduler,
warmup)``, gradient norm clipped at 1.0.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metareward.config import TrainingConfig
from metareward.engines.tokens import common_prefix
from metareward.training.activations import ACTIVATION_BUDGET, MicroBatchPlan

HEAD_CHUNK = 256  # completion positions per LM-head slice when no gradient is needed


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
    cut = min(common_prefix(p, pc), common_prefix(p, pr))
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
    pair's long prompt runs once, not twice. Padded positions attend only to themselves.
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
    zero-filled [tokens, vocab] gradient, a scatter and a full-size softmax backward, each a pass over
    memory on a CPU. Here the forward keeps only each row's log-sum-exp (computed in ``HEAD_CHUNK``
    slices), and the backward turns the saved logits into their gradient in place,
    ``-g * softmax + g * onehot(target)``. Assumes, and is only used where, the
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


def _fused_adamw_ok(params: Sequence[torch.Tensor]) -> bool:
    """PyTorch's fused AdamW runs on CPU and CUDA for floating-point parameters on one device type."""
    kinds = {(p.device.type, p.dtype) for p in params}
    return len({d for d, _ in kinds}) == 1 and all(d in ("cpu", "cuda") and t.is_floating_point for d, t in kinds)


def _global_batches(n_items: int, size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """The pair indices of each of ``steps`` optimizer steps: ``size`` at a time from a shuffled order,
    reshuffled (``random.Random(seed)``) whenever the order runs out (an epoch's last batch may be smaller)."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = list(range(n_items))
            rng.shuffle(order)
        chunk, order = order[:size], order[size:]
        yield chunk


@dataclass
class _StepResult:
    """What one optimizer step's micro-batches computed: per-pair losses and implicit rewards, the
    sequence tokens they ran, and the checkpointed layer count of each micro-batch."""

    losses: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    tokens: int
    checkpointed: list[int]

    def entry(self) -> dict[str, float]:
        """The step's DPO metrics, as TRL logs them."""
        c, r = self.chosen, self.rejected
        return {
            "loss": float(self.losses.mean()),
            "rewards/chosen": float(c.mean()),
            "rewards/rejected": float(r.mean()),
            "rewards/margins": float((c - r).mean()),
            "rewards/accuracies": float((c > r).float().mean()),
        }


def _accumulate(model, items: Sequence[PairTokens], ref: torch.Tensor, chunk: list[int], plan: MicroBatchPlan,
                batch_size: int, beta: float, pad_id: int) -> _StepResult:
    """Forward and backward of one global batch (``chunk``) into the gradients: cut by length into
    micro-batches of ``batch_size`` pairs, each split and checkpointed as ``plan`` says; each pair's loss
    counts 1/len(chunk)."""
    losses, chosen, rejected, checkpointed = [], [], [], []
    tokens = 0
    parts = [part for micro in _micro_batches(chunk, items, batch_size) for part in plan.parts(micro)]
    for micro in parts:
        pairs_in = [items[i] for i in micro]
        tokens += sum(len(s) for t in pairs_in for s, _ in t.sequences())
        count = plan.layers_to_checkpoint(micro)
        checkpointed.append(count)
        with plan.checkpointing(count):
            logps = micro_batch_logps(model, pairs_in, pad_id)
            r = ref[micro].to(logps.device)
            loss, cr, rr = dpo_loss(logps[:, 0], logps[:, 1], r[:, 0], r[:, 1], beta)
            (loss.sum() / len(chunk)).backward()
        losses.append(loss.detach())
        chosen.append(cr)
        rejected.append(rr)
    return _StepResult(torch.cat(losses), torch.cat(chosen), torch.cat(rejected), tokens, checkpointed)


class _StepLog:
    """Each optimizer step's metrics (``training.common.STEP_KEYS``: loss, rewards, margins, accuracy, the
    learning rate the step used, the gradient norm before clipping, tokens/s of the step) appended to
    ``log_path`` when given (a fresh ``TrainLog``: a killed round restarts from step 1) and handed to the
    ``report_to`` integrations (``training.common.NativeReporter``; their files go beside ``log_path``)."""

    def __init__(self, log_path: str | Path | None, report_to: Sequence[str], model, tokenizer, total_steps: int,
                 steps_per_epoch: int, started: float):
        from metareward.training.common import NativeReporter, TrainLog

        self.train_log = TrainLog(log_path, resume_step=0) if log_path is not None else None
        folder = Path(log_path).parent if log_path is not None else Path.cwd()
        self.reporter = NativeReporter(report_to, folder, model, tokenizer)
        self.reporter.begin(total_steps)
        self.steps_per_epoch, self.started = steps_per_epoch, started

    def step(self, step: int, entry: dict[str, float], lr: float, grad_norm: float, tokens: int,
             seconds: float) -> None:
        from metareward.training.common import step_record

        record = step_record(step, step / self.steps_per_epoch, {
            **entry, "learning_rate": lr, "grad_norm": grad_norm,
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
        }, time.perf_counter() - self.started)
        if self.train_log is not None:
            self.train_log.append(record)
        self.reporter.log(record)

    def end(self) -> None:
        self.reporter.end()


def _optimizer(model, cfg: TrainingConfig, total_steps: int):
    """AdamW over the trainable parameters (fused where PyTorch allows: one pass over the parameters
    instead of ~10 elementwise ones, memory-bound on a CPU) and its learning-rate schedule."""
    from transformers import get_scheduler

    warmup = math.ceil(cfg.warmup_ratio * total_steps) if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                  fused=_fused_adamw_ok(params))
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def train_dpo_native(model, tokenizer, pairs: Sequence[dict[str, Any]], cfg: TrainingConfig, ref_model=None,
                     log_path: str | Path | None = None,
                     activation_budget: int | None = ACTIVATION_BUDGET) -> dict[str, Any]:
    """Train ``model`` in place with DPO on ``pairs`` (dicts with prompt: chat messages or str, chosen,
    rejected: str or assistant messages) as ``cfg`` says (beta, learning rate and schedule, warm-up,
    epochs, batch size, gradient accumulation, max length, ``shuffle_seed``, ``report_to``). The
    reference is ``ref_model`` if given, else ``model``'s weights before training (log-probs taken once up
    front). Returns metrics: loss, rewards, accuracy (first and last optimizer step), steps, tokens,
    runtime and tokens/s. Each step is logged to ``log_path`` and ``cfg.report_to`` (``_StepLog``).

    ``activation_budget``: bytes of decoder-layer activations a micro-batch may keep for backward
    (``training.activations``; None: no bound). Changes memory and time only."""
    started = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [t for t in (tokenize_pair(tokenizer, p, cfg.max_length) for p in pairs) if t is not None]
    if not items:
        raise ValueError("no preference pairs to train on (every prompt fills max_length?)")
    ref = reference_logps(ref_model if ref_model is not None else model, items, cfg.batch_size, pad_id)
    reference_s = time.perf_counter() - started
    global_batch = cfg.batch_size * cfg.gradient_accumulation
    steps_per_epoch = math.ceil(len(items) / global_batch)
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    optimizer, scheduler = _optimizer(model, cfg, total_steps)
    log = _StepLog(log_path, cfg.report_to, model, tokenizer, total_steps, steps_per_epoch, started)
    model.train()
    plan = MicroBatchPlan(model, lambda micro: micro_batch_positions(model, [items[i] for i in micro]),
                          activation_budget)
    entries, step_times, checkpointed, tokens = [], [], [], 0
    for step, chunk in enumerate(_global_batches(len(items), global_batch, total_steps, cfg.shuffle_seed), 1):
        step_start = time.perf_counter()
        step_lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)  # no gradients held through the forward (see module docstring)
        result = _accumulate(model, items, ref, chunk, plan, cfg.batch_size, cfg.beta, pad_id)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        scheduler.step()
        step_times.append(time.perf_counter() - step_start)
        tokens += result.tokens
        checkpointed += result.checkpointed
        entries.append(result.entry())
        log.step(step, entries[-1], step_lr, grad_norm, result.tokens, step_times[-1])
    log.end()
    optimizer.zero_grad(set_to_none=True)  # the model is saved next: without its last gradients beside it
    model.eval()
    runtime = time.perf_counter() - started
    return {
        "pairs": len(items),
        "dropped_pairs": len(pairs) - len(items),
        "steps": total_steps,
        "train_loss": sum(entry["loss"] for entry in entries) / len(entries),
        "runtime_s": runtime,
        "reference_s": reference_s,
        "step_s": step_times,
        "checkpointed_layers": checkpointed,  # per micro-batch, in order
        "tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime > 0 else None,
        "precision": str(next(model.parameters()).dtype).replace("torch.", ""),
        "first": entries[0],
        "last": entries[-1],
    }


def train_dpo_native_from_path(
    model_path: str,
    pairs: Sequence[Any],
    out_dir,
    cfg: TrainingConfig,
    work_dir=None,
    threads: int = 0,
) -> dict[str, Any]:
    """Drop-in for ``metareward.training.dpo.train_dpo`` (same arguments): load, train, save atomically.

    ``pairs`` are ``PreferencePair`` records. Full fine-tuning only (LoRA stays with the TRL backend). No
    mid-training checkpoints: a killed run restarts the round, whose output folder appears only when
    complete, and its ``train_log.jsonl`` (beside ``out_dir``) starts over. ``work_dir`` is unused (kept
    for the same signature).
    """
    from metareward.models import save_model_atomic
    from metareward.training.common import load_for_training, train_log_path
    from metareward.training.dpo import to_conversational

    if cfg.method != "full":
        raise ValueError(f"training.method {cfg.method!r} needs training.backend: trl (native trains full models)")
    out_dir = Path(out_dir)
    loaded = load_for_training(model_path, cfg.precision, threads, on_device=True)
    rows = [
        {"prompt": r["prompt"], "chosen": r["chosen"][0]["content"], "rejected": r["rejected"][0]["content"]}
        for r in to_conversational(pairs, cfg.shuffle_seed)
    ]
    metrics = train_dpo_native(loaded.model, loaded.tokenizer, rows, cfg, log_path=train_log_path(out_dir))
    save_model_atomic(loaded.model, loaded.tokenizer, out_dir)
    metrics["backend"] = "native"
    return metrics
