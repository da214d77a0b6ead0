"""The activation budget of native DPO: how much a micro-batch may keep for backward, and how it fits.

A micro-batch's decoder layers keep their activations for backward; long judge pairs make that the
largest part of a DPO step's memory (``docs/performance.md``). ``MicroBatchPlan`` keeps it within
``activation_budget`` bytes: the first layers run under activation checkpointing (recomputed in
backward, bit for bit the same, so the loss and the gradients do not change:
``tests/test_dpo_native_memory.py``), just enough of them to fit; a micro-batch that does not fit even
with every layer checkpointed runs in halves (``split_to_budget``: the same gradients up to the sum's
rounding). It changes memory and time only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.utils.checkpoint

ACTIVATION_BUDGET = 128 << 20  # bytes of decoder-layer activations a micro-batch may keep for backward


def layer_activation_bytes(config, tokens: int, itemsize: int) -> int:
    """Estimated bytes one decoder layer keeps for backward over ``tokens`` (padded) positions: per token,
    10 hidden-sized, 4 key/value-sized and 5 MLP-sized values (norms, projections, rotary, attention
    output; gate, up, activation, product). Fitted to a Llama layer of SmolLM2-135M's shape in float32
    (estimate against measurement: ``docs/performance.md``)."""
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


class MicroBatchPlan:
    """Where a step's micro-batches fit ``budget`` bytes of saved activations (None: no bound).

    ``positions(micro)``: the padded positions the decoder runs for a micro-batch (pair indices).
    ``parts`` cuts a micro-batch into the parts that run as separate backward passes, ``layers_to_checkpoint``
    says how many decoder layers of a part run checkpointed, and ``checkpointing`` applies that."""

    def __init__(self, model, positions: Callable[[list[int]], int], budget: int | None):
        self.config = model.config
        self.layers = getattr(model.get_decoder(), "layers", [])
        self.itemsize = next(model.parameters()).element_size()
        self.positions = positions
        self.budget = budget

    def kept(self, micro: list[int]) -> tuple[int, int]:
        """(bytes a plain layer keeps, bytes a checkpointed layer keeps) for ``micro``."""
        padded = self.positions(micro)
        return (layer_activation_bytes(self.config, padded, self.itemsize),
                padded * self.config.hidden_size * self.itemsize)

    def fits(self, micro: list[int]) -> bool:
        """Every layer checkpointed and one recomputed: within the budget."""
        per_layer, saved = self.kept(micro)
        return self.budget is None or len(self.layers) * saved + per_layer <= self.budget

    def parts(self, micro: list[int]) -> list[list[int]]:
        return split_to_budget(micro, self.fits)

    def layers_to_checkpoint(self, micro: list[int]) -> int:
        return checkpointed_layer_count(len(self.layers), *self.kept(micro), self.budget)

    def checkpointing(self, count: int):
        return activation_checkpointing(self.layers, count)
