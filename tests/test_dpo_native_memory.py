"""Native DPO's activation budget: how many layers it checkpoints, and that doing so changes no bit.

On a tiny random Llama with the embedded model's tokenizer (no model weights loaded): training with
every layer, some layers or no layer checkpointed gives exactly the same weights and metrics, and a
checkpointed layer keeps less for backward; a micro-batch over the budget even with every layer
checkpointed runs in halves.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from metareward.config import TrainingConfig
from metareward.training.activations import (
    activation_checkpointing,
    checkpointed_layer_count,
    layer_activation_bytes,
    split_to_budget,
)
from metareward.training.dpo_native import sequence_logps, tokenize_pair, train_dpo_native

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": "The capital of France is Paris.", "rejected": "France is a country in Europe with many cities."},
    {"prompt": [{"role": "user", "content": "Give me a synonym for happy."}],
     "chosen": "Joyful.", "rejected": "Sad is a word people use when they are not happy at all, so maybe that one."},
    {"prompt": [{"role": "user", "content": "Add 17 and 25, then explain the carry in one sentence."}],
     "chosen": "17 + 25 = 42: 7 + 5 = 12, write 2 and carry 1 to the tens.", "rejected": "It is 32."},
    {"prompt": [{"role": "user", "content": "Name a prime number between 10 and 20 and say why it is prime."}],
     "chosen": "13: only 1 and 13 divide it.", "rejected": "15, because it is odd."},
]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metareward.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=True))
    return model, tok


def test_checkpointed_layer_count_fits_the_budget_with_as_few_layers_as_possible():
    assert checkpointed_layer_count(30, 100, 10, None) == 0
    assert checkpointed_layer_count(30, 100, 10, 3000) == 0  # everything fits
    # 24 layers: 6 plain x 100 + 24 inputs x 10 + 100 recomputed = 940 <= 1000; 23 layers: 1030 > 1000
    assert checkpointed_layer_count(30, 100, 10, 1000) == 24
    assert checkpointed_layer_count(30, 100, 10, 0) == 30  # nothing fits: every layer
    assert checkpointed_layer_count(30, 10, 10, 5) == 30  # a checkpointed layer would save nothing


def test_layer_activation_bytes_of_smollm2_135m_shape():
    config = SimpleNamespace(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)
    # float32: 10 x 576 + 4 x 192 + 5 x 1536 = 14208 values per token
    assert layer_activation_bytes(config, 1, 4) == 56832
    assert layer_activation_bytes(config, 4800, 4) == 4800 * 56832


def _train(model, tok, budget, batch_size=1, grad_accum=2):
    policy = copy.deepcopy(model)
    cfg = TrainingConfig(beta=0.1, learning_rate=1e-3, epochs=2, batch_size=batch_size,
                         gradient_accumulation=grad_accum, max_length=256, warmup_ratio=0.0, lr_scheduler="constant",
                         shuffle_seed=0)
    metrics = train_dpo_native(policy, tok, PAIRS, cfg, activation_budget=budget)
    return policy, metrics


def assert_same_training(a, b, a_metrics, b_metrics):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name
    for key in ("first", "last"):
        assert a_metrics[key] == b_metrics[key]


def test_checkpointing_changes_no_bit_of_the_trained_model(tiny):
    model, tok = tiny
    plain, plain_metrics = _train(model, tok, None)
    other, metrics = _train(model, tok, 1)  # a 1-byte budget: every layer checkpointed
    assert set(plain_metrics["checkpointed_layers"]) == {0}
    assert set(metrics["checkpointed_layers"]) == {3}
    assert len(metrics["checkpointed_layers"]) == 8  # 2 epochs x 2 steps x 2 micro-batches of one pair
    assert_same_training(plain, other, plain_metrics, metrics)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))  # it did train


def test_split_to_budget_halves_until_it_fits():
    assert split_to_budget([4, 2, 7, 1], lambda m: True) == [[4, 2, 7, 1]]
    assert split_to_budget([4, 2, 7, 1], lambda m: False) == [[4], [2], [7], [1]]
    assert split_to_budget([4, 2, 7], lambda m: len(m) <= 2) == [[4, 2], [7]]
    assert split_to_budget([4, 2, 7, 1, 9], lambda m: 9 not in m or len(m) == 1) == [[4, 2, 7], [1], [9]]


def test_a_micro_batch_over_the_budget_even_checkpointed_is_split(tiny):
    """Two pairs per micro-batch, but even with every layer checkpointed they keep more than a 1-byte
    budget: each runs as two micro-batches of one pair, the same training bit for bit as micro-batches
    of one pair to begin with (both sort a step's pairs by length)."""
    model, tok = tiny
    split, split_metrics = _train(model, tok, 1, batch_size=2, grad_accum=1)
    single, single_metrics = _train(model, tok, 1, batch_size=1, grad_accum=2)
    assert split_metrics["checkpointed_layers"] == [3] * 8  # 2 epochs x 2 steps x 2 halves
    assert_same_training(split, single, split_metrics, single_metrics)
    roomy, roomy_metrics = _train(model, tok, None, batch_size=2, grad_accum=1)
    assert len(roomy_metrics["checkpointed_layers"]) == 4  # no budget: no split


def test_some_layers_checkpointed_gives_the_same_gradients(tiny):
    model, tok = tiny
    items = [tokenize_pair(tok, p, None) for p in PAIRS]
    seqs = [s for t in items for s in t.sequences()]
    layers = model.get_decoder().layers
    grads = []
    for count in (0, 2):
        policy = copy.deepcopy(model).train()
        with activation_checkpointing(policy.get_decoder().layers, count):
            sequence_logps(policy, seqs, tok.pad_token_id).sum().backward()
        grads.append([p.grad for p in policy.parameters()])
        assert all("forward" not in layer.__dict__ for layer in policy.get_decoder().layers)  # restored
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_a_checkpointed_layer_keeps_less_for_backward(tiny):
    model, tok = tiny
    items = [tokenize_pair(tok, p, None) for p in PAIRS]
    seqs = [s for t in items for s in t.sequences()]
    kept = {}
    for count in (0, 3):
        policy = copy.deepcopy(model).train()
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with activation_checkpointing(policy.get_decoder().layers, count), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sequence_logps(policy, seqs, tok.pad_token_id)
        kept[count] = total[0]
    assert kept[3] < kept[0]


def test_no_gradient_is_held_through_a_steps_forward(tiny):
    """Each optimizer step frees the gradients (``zero_grad(set_to_none=True)``): the next step's forward
    runs beside the weights and the AdamW states only, not beside a full set of zeroed gradients."""
    model, tok = tiny
    policy = copy.deepcopy(model)
    held = []
    handle = policy.get_decoder().register_forward_pre_hook(
        lambda module, args: held.append(sum(p.grad is not None for p in policy.parameters())))
    try:
        cfg = TrainingConfig(beta=0.1, learning_rate=1e-3, epochs=2, batch_size=2, gradient_accumulation=1,
                             max_length=256, warmup_ratio=0.0, lr_scheduler="constant", shuffle_seed=0)
        train_dpo_native(policy, tok, PAIRS, cfg)
    finally:
        handle.remove()
    assert len(held) == 2 + 4  # the reference pass (2 micro-batches), then 2 epochs x 2 steps x 1 micro-batch
    assert held == [0] * 6
    assert all(p.grad is None for p in policy.parameters())  # and none is left after training


def test_global_batches_cover_every_pair_once_per_epoch():
    from metareward.training.dpo_native import _global_batches

    chunks = list(_global_batches(5, 2, 6, seed=3))
    assert [len(c) for c in chunks] == [2, 2, 1, 2, 2, 1]  # an epoch's last batch is smaller
    assert sorted(sum(chunks[:3], [])) == sorted(sum(chunks[3:], [])) == [0, 1, 2, 3, 4]
    assert chunks == list(_global_batches(5, 2, 6, seed=3))  # seeded
    assert sum(chunks[:3], []) != sum(list(_global_batches(5, 2, 3, seed=4)), [])
