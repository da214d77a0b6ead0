"""The native DPO step equals TRL's DPOTrainer on the same batch: tokens, loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from metareward.config import TrainingConfig
from metareward.training.common import checkpointing_kwargs
from metareward.training.dpo_native import (
    dpo_loss,
    micro_batch_logps,
    packs_pairs,
    pair_logps,
    reference_logps,
    sequence_logps,
    tokenize_pair,
    train_dpo_native,
)

pytestmark = pytest.mark.slow

PAIRS = [
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": "The capital of France is Paris.",
        "rejected": "France is a country in Europe with many cities.",
    },
    {
        "prompt": [{"role": "user", "content": "Give me a synonym for happy."}],
        "chosen": "Joyful.",
        "rejected": "Sad is a word people use when they are not happy at all, so maybe that one.",
    },
    {
        "prompt": [{"role": "user", "content": "Add 17 and 25, then explain the carry in one sentence."}],
        "chosen": "17 + 25 = 42: 7 + 5 = 12, write 2 and carry 1 to the tens.",
        "rejected": "It is 32.",
    },
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The embedded model's tokenizer and architecture (its config: tied embeddings, RoPE, grouped KV
    heads, vocabulary) at a tiny size, randomly initialised: the native step and TRL's must agree on any
    model, and the 135M one made these comparisons cost over a minute (the real model is trained and
    saved in ``test_native_backend_from_path_saves_a_model_that_loads``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from metareward.models import resolve_model

    path = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok) == 49152
    return model, tok


def trl_batch_loss_and_grads(model, tok, pairs, beta, max_length):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = copy.deepcopy(model)
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    args = DPOConfig(
        output_dir="/tmp/unused-dpo-native-test", per_device_train_batch_size=len(pairs), beta=beta,
        max_length=max_length, bf16=False, fp16=False, use_cpu=True,
        report_to=[], dataset_num_proc=None, disable_tqdm=True, **checkpointing_kwargs(DPOConfig, False),
    )
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    data = trainer.train_dataset
    batch = trainer.data_collator([data[i] for i in range(len(data))])
    policy.train()
    loss = trainer.compute_loss(policy, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters() if p.grad is not None}
    tokens = [(list(data[i]["prompt_ids"]), list(data[i]["chosen_ids"]), list(data[i]["rejected_ids"]))
              for i in range(len(data))]
    return float(loss), grads, tokens


@pytest.mark.parametrize("max_length", [None, 52])  # 52 truncates two completions
def test_loss_and_gradients_match_trl(model_and_tokenizer, max_length):
    model, tok = model_and_tokenizer
    beta = 0.1
    trl_loss, trl_grads, trl_tokens = trl_batch_loss_and_grads(model, tok, PAIRS, beta, max_length)

    items = [tokenize_pair(tok, p, max_length) for p in PAIRS]
    keep = max_length or 10**9  # TRL stores full ids and truncates the joined sequence in its collator
    trl_tokens = [(p, c[: keep - len(p)], r[: keep - len(p)]) for p, c, r in trl_tokens]
    assert [(t.prompt, t.chosen, t.rejected) for t in items] == trl_tokens
    if max_length:
        assert any(len(t.prompt + t.chosen) == max_length for t in items)

    # The reference differs from the policy only after a step, so perturb nothing: both start equal
    # (loss = log 2); the gradient is still nonzero and must match TRL's.
    policy = copy.deepcopy(model)
    policy.train()
    ref = reference_logps(model, items, batch_size=2, pad_id=tok.pad_token_id)
    assert packs_pairs(policy)  # the packed path training takes is the one compared with TRL
    logps = micro_batch_logps(policy, items, tok.pad_token_id)
    loss, _, _ = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta)
    loss.mean().backward()
    assert abs(float(loss.mean()) - trl_loss) < 1e-5
    assert abs(trl_loss - 0.6931472) < 1e-4
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert grads.keys() == trl_grads.keys()
    flat = torch.cat([grads[n].flatten() for n in grads])
    trl_flat = torch.cat([trl_grads[n].flatten() for n in grads])
    assert flat.norm() > 0
    rel = float((flat - trl_flat).norm() / trl_flat.norm())
    worst = max(float((grads[n] - trl_grads[n]).norm() / trl_grads[n].norm().clamp(min=1e-12)) for n in grads)
    assert rel < 1e-4 and worst < 1e-3, (rel, worst)


def test_loss_matches_trl_when_policy_differs_from_reference(model_and_tokenizer):
    """After a native step the policy moved: the loss of a shifted policy must still equal TRL's."""
    model, tok = model_and_tokenizer
    moved = copy.deepcopy(model)
    cfg = TrainingConfig(beta=0.1, learning_rate=1e-4, epochs=2, batch_size=2, gradient_accumulation=1,
                         max_length=None, warmup_ratio=0.0, lr_scheduler="constant", shuffle_seed=0)
    metrics = train_dpo_native(moved, tok, PAIRS, cfg)
    assert metrics["steps"] == 4 and metrics["pairs"] == 3
    assert metrics["last"]["rewards/margins"] > metrics["first"]["rewards/margins"]

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in PAIRS]
    args = DPOConfig(output_dir="/tmp/unused-dpo-native-test", per_device_train_batch_size=3, beta=0.1,
                     bf16=False, use_cpu=True, report_to=[], disable_tqdm=True)
    trainer = DPOTrainer(model=moved, ref_model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    data = trainer.train_dataset
    batch = trainer.data_collator([data[i] for i in range(len(data))])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(moved, batch))
    items = [tokenize_pair(tok, p, None) for p in PAIRS]
    ref = reference_logps(model, items, 3, tok.pad_token_id)
    pol = reference_logps(moved, items, 3, tok.pad_token_id)
    loss, _, _ = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], 0.1)
    assert trl_loss < 0.69
    assert abs(float(loss.mean()) - trl_loss) < 1e-5


@pytest.mark.slow
def test_native_backend_from_path_saves_a_model_that_loads(tmp_path):
    """The loop's entry point for ``training.backend: native``: train from a folder, save atomically."""
    from transformers import AutoModelForCausalLM

    from metareward.config import TrainingConfig
    from metareward.models import resolve_model
    from metareward.records import PreferencePair
    from metareward.training.dpo_native import train_dpo_native_from_path

    pairs = [
        PreferencePair(id=f"actor/p{i}", kind="actor", prompt_id=f"p{i}", prompt=q, chosen=c, rejected=r,
                       chosen_id="c", rejected_id="r")
        for i, (q, c, r) in enumerate([("Name a color.", "Blue.", "I cannot help with that request at all."),
                                       ("What is 2+2?", "4.", "It might be 5, or maybe 22.")])
    ]
    cfg = TrainingConfig(backend="native", batch_size=2, gradient_accumulation=1, max_length=256,
                         warmup_ratio=0.0, epochs=1)
    out = tmp_path / "model"
    metrics = train_dpo_native_from_path(resolve_model("smollm2-135m"), pairs, out, cfg, threads=2)
    assert metrics["backend"] == "native" and metrics["steps"] == 1
    # the model (written atomically: no temp folder left) and the per-step training log beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train_log.jsonl"]
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == metrics["steps"]
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 49152


def test_sliced_no_grad_logps_equal_the_differentiable_ones(model_and_tokenizer, monkeypatch):
    """The reference pass computes the LM head in slices with logsumexp; the training pass whole with
    log_softmax: the same log-probabilities (slices of 5 positions, so sequences cross slice borders)."""
    from metareward.training import dpo_native

    model, tok = model_and_tokenizer
    monkeypatch.setattr(dpo_native, "HEAD_CHUNK", 5)
    seqs = [s for p in PAIRS for s in tokenize_pair(tok, p, None).sequences()]
    with torch.no_grad():
        sliced = sequence_logps(model, seqs, tok.pad_token_id)
    with torch.enable_grad():
        whole = sequence_logps(model, seqs, tok.pad_token_id).detach()
    assert torch.allclose(sliced, whole, atol=1e-3, rtol=0), (sliced - whole).abs().max()  # fp32 sums of ~50
    assert len({round(v, 3) for v in whole.tolist()}) == len(seqs)  # distinct sequences, not one value


def test_target_logps_equal_log_softmax_gather_in_value_and_gradient(monkeypatch):
    """``_TargetLogps`` (log-sum-exp in slices, in-place backward) against ``log_softmax(...).gather``,
    in float64, with slices that do not divide the rows and a repeated target."""
    from metareward.training import dpo_native

    monkeypatch.setattr(dpo_native, "HEAD_CHUNK", 3)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 8, dtype=torch.float64, generator=gen)
    states = torch.randn(7, 8, dtype=torch.float64, generator=gen)
    targets = torch.tensor([0, 5, 5, 39, 12, 0, 7])
    upstream = torch.randn(7, dtype=torch.float64, generator=gen)

    def grads(fn):
        w, s = weight.clone().requires_grad_(), states.clone().requires_grad_()
        out = fn(s @ w.t(), targets)
        out.backward(upstream)
        return out.detach(), w.grad, s.grad

    plain = grads(lambda logits, t: torch.log_softmax(logits, -1).gather(1, t[:, None]).squeeze(1))
    fused = grads(dpo_native._TargetLogps.apply)
    for a, b in zip(plain, fused):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_equal_two_rows_per_pair_in_value_and_gradient(model_and_tokenizer, attention):
    """``pair_logps`` runs each pair as one row (prompt once, chosen, then rejected masked from the chosen
    tokens, positions continuing the prompt's): the same log-probs and gradients as prompt+chosen and
    prompt+rejected as two rows, for both attention implementations that take its 4D mask; pairs of
    different lengths, so rows are padded."""
    model, tok = model_and_tokenizer
    items = [tokenize_pair(tok, p, None) for p in PAIRS]
    out = []
    for packed in (True, False):
        policy = copy.deepcopy(model).train()
        policy.config._attn_implementation = attention
        if packed:
            logps = pair_logps(policy, items, tok.pad_token_id)
        else:
            logps = sequence_logps(policy, [s for t in items for s in t.sequences()], tok.pad_token_id).view(-1, 2)
        (logps * torch.tensor([[1.0, -0.5]])).sum().backward()
        out.append((logps.detach(), torch.cat([p.grad.flatten() for p in policy.parameters()])))
    (packed, packed_grad), (rows, rows_grad) = out
    assert torch.allclose(packed, rows, rtol=0, atol=1e-4), (packed - rows).abs().max()
    assert float((packed_grad - rows_grad).norm() / rows_grad.norm()) < 1e-5
    # the chosen completion changes the rejected one's log-probs if the mask lets it be seen
    swapped = [tokenize_pair(tok, {**p, "chosen": "Completely different words here."}, None) for p in PAIRS]
    with torch.no_grad():
        assert torch.allclose(pair_logps(model, swapped, tok.pad_token_id)[:, 1], rows[:, 1], rtol=0, atol=1e-4)


def test_packed_pairs_with_an_empty_completion(model_and_tokenizer):
    """A completion with no tokens has log-prob 0 and leaves its pair's other completion as it was."""
    from metareward.training.dpo_native import PairTokens

    model, tok = model_and_tokenizer
    full = tokenize_pair(tok, PAIRS[0], None)
    items = [PairTokens(full.prompt, full.chosen, []), PairTokens(full.prompt, [], full.rejected)]
    with torch.no_grad():
        packed = pair_logps(model, items, tok.pad_token_id)
        rows = sequence_logps(model, [s for t in items for s in t.sequences()], tok.pad_token_id).view(-1, 2)
    assert packed[0, 1] == 0 and packed[1, 0] == 0
    assert torch.allclose(packed, rows, rtol=0, atol=1e-4)
