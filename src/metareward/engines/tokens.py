"""Token-level conventions every engine shares: where a completion stops, and how a choice is read.

One definition for the ``hf``, ``vllm`` and ``openai`` engines, so they cannot drift apart (the stop set
once differed between ``hf`` and ``vllm``):

* ``stop_token_ids``: a completion ends at the tokenizer's eos, the generation config's eos id(s), or a
  known end-of-turn token (``END_OF_TURN``, those the tokenizer has as real tokens).
* ``choice_context``: how a ``ChoiceRequest``'s ``assistant_prefix`` and its ``choices`` become context
  tokens plus one token per choice (the constrained scoring mode reads the next-token probability of
  exactly those tokens).
* ``common_prefix``: how many leading tokens two sequences share (the hf engine's prefix sharing, and
  native DPO's cut between a pair's prompt and its completions, which is why it lives here and not in
  the hf engine: training may import this module).

Pure functions of a tokenizer (any object with the transformers tokenizer methods used below): no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # ChatML, Llama 3, Phi-3, Gemma


def stop_token_ids(tokenizer: Any, model_path: str | None = None, generation_eos: int | Iterable[int] | None = None,
                   ) -> list[int]:
    """The sorted stop set: the tokenizer's eos, the generation config's eos id(s) and each
    ``END_OF_TURN`` token the tokenizer knows (not mapped to its unknown token).

    The generation config's eos: ``generation_eos`` when given (an engine holding the model passes
    ``model.generation_config.eos_token_id``), else read from ``model_path``'s ``generation_config.json``
    (none if it has none)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if generation_eos is None and model_path:
        from transformers import GenerationConfig

        try:
            generation_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except OSError:  # no generation_config.json
            generation_eos = None
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    for token in END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cut_at_stop(tokens: Sequence[int], stop_ids: Iterable[int]) -> tuple[list[int], bool]:
    """``tokens`` up to (not including) the first stop token, and whether one was there."""
    stops = set(stop_ids)
    for j, t in enumerate(tokens):
        if t in stops:
            return list(tokens[:j]), True
    return list(tokens), False


def choice_context(tokenizer: Any, prefix: str, choices: Sequence[str]) -> tuple[list[int], list[int]]:
    """Context tokens and one token per choice, tokenized the way the text would naturally be.

    ``prefix + choice`` is encoded whole for every choice; the context is their common leading tokens
    and each choice must add exactly one token (else ``ValueError``). This absorbs a trailing space of
    the prefix into the choice token where the tokenizer merges them (``"Judgment " + "A"`` is
    ``"ĠJudgment" "ĠA"`` in BPE, not ``"ĠJudgment" "Ġ" "A"``), so the model is asked the question in the
    form it has seen in training."""
    encoded = [tokenizer.encode(prefix + c, add_special_tokens=False) for c in choices]
    common = 0
    shortest = min(len(e) for e in encoded)
    while common < shortest and all(e[common] == encoded[0][common] for e in encoded):
        common += 1
    if any(len(e) != common + 1 for e in encoded) or (common == 0 and prefix):
        raise ValueError(f"choices {list(choices)} are not single tokens after {prefix[-20:]!r}")
    return encoded[0][:common], [e[common] for e in encoded]
