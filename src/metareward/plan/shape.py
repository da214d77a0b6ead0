"""What the planner needs to know about a model, read without loading its weights or touching a hub.

* ``ModelShape``: layers, hidden size, heads, KV heads, head size, MLP width, vocabulary, tied head;
  from which parameters, the forward pass's FLOPs and the KV cache's bytes per token follow.
* ``TokenCounter``: how many tokens a text (or a one-user-turn chat) is, with the model's own tokenizer
  and chat template when they are on this machine, else a stated characters-per-token assumption.

Where the shape comes from, in order: the embedded model (``models.resolve_model``, offline), a local
folder's ``config.json``, the local Hugging Face cache, then ``KNOWN_SHAPES`` (the public config.json
values of models the shipped configs name, so the paper's config plans on a machine without its
weights). Each result says which one it used (``source``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.models import EMBEDDED_MODELS, resolve_model

KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    # config.json of meta-llama/Meta-Llama-3-8B(-Instruct) as published on the Hugging Face hub
    "meta-llama/Meta-Llama-3-8B-Instruct": {
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
    },
}
KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"] = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]

DEFAULT_CHARS_PER_TOKEN = 4.0
"""Assumption used only when the model's tokenizer is not on this machine: English text averages about
four characters per token with the large BPE vocabularies of current models."""


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's dimensions (Llama-style: gated MLP, grouped-query attention)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    source: str  # where the numbers were read

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any], source: str) -> ModelShape:
        """The shape read from a ``config.json``; a field the plan needs that is missing or not a number is
        an ``InputError`` naming it (the plan only knows decoder-only, Llama-style configs)."""
        need = ("num_attention_heads", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
        bad = [k for k in need if not isinstance(config.get(k), int | float) or isinstance(config.get(k), bool)]
        if bad:
            raise InputError(f"{source}: field {bad[0]} missing or not a number; the plan reads decoder-only "
                             "(Llama-style) configs")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            name=name, hidden=hidden, layers=int(config["num_hidden_layers"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)), source=source,
        )

    @property
    def body_params(self) -> int:
        """Parameters of the transformer layers (attention q/k/v/o and the gated MLP; norms ignored)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Every stored parameter: embedding, layers (with their two RMSNorm weights), final norm and
        (untied) LM head."""
        norms = (2 * self.layers + 1) * self.hidden
        return self.body_params + norms + self.head_params * (1 if self.tied else 2)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def forward_flops(self, tokens: float, context: float, head_tokens: float) -> float:
        """FLOPs of a forward over ``tokens`` positions after ``context`` cached ones, the LM head run at
        ``head_tokens`` of them: 2 per weight per token, plus attention's 4 x layers x heads x head_dim
        per (query, key) pair (the model of benchmarks/run.py, so estimates and measurements compare)."""
        keys = tokens * context + tokens * (tokens + 1) / 2
        return (2 * self.body_params * tokens + 2 * self.head_params * head_tokens
                + 4 * self.layers * self.heads * self.head_dim * keys)


def _local_path(name: str) -> Path | None:
    """A folder holding ``name``'s config.json on this machine, or None (nothing is downloaded)."""
    if name in EMBEDDED_MODELS:
        return Path(resolve_model(name))
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    cached = try_to_load_from_cache(name, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def load_shape(name: str) -> tuple[ModelShape, Path | None]:
    """The shape of model ``name`` and the local folder it came from (None: from ``KNOWN_SHAPES``)."""
    folder = _local_path(name)
    if folder is not None:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        return ModelShape.from_config(name, config, f"{folder / 'config.json'}"), folder
    if name in KNOWN_SHAPES:
        return ModelShape.from_config(name, KNOWN_SHAPES[name], "built-in table (the model's published "
                                      "config.json; its weights are not on this machine)"), None
    raise InputError(f"model: cannot plan {name!r}: no config.json on this machine (embedded model, local "
                     f"folder or Hugging Face cache) and not one of {', '.join(sorted(KNOWN_SHAPES))}")


class TokenCounter:
    """Token counts as an engine sees them: ``chat`` is a one-user-turn conversation with the assistant
    header appended (what the engines prefill), ``text`` a bare completion.

    With a tokenizer, ``chat(t)`` is the chat template's tokens around the turn plus ``t``'s own tokens:
    exact for templates that close the user turn with a special token (ChatML, Llama 3), which is what
    makes counting in batches possible. Without one: characters / ``chars_per_token`` (an assumption,
    named in ``label``)."""

    def __init__(self, tokenizer: Any = None, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN, label: str = ""):
        self.tokenizer = tokenizer
        self.chars_per_token = chars_per_token
        self.label = label or (f"tokenizer: {chars_per_token:g} characters per token (assumption: the model's "
                               "tokenizer is not on this machine)")
        self.overhead = 0
        if tokenizer is not None:
            probe = "Hello"
            self.overhead = len(self._chat_ids(probe)) - len(self._encode([probe])[0])

    def _chat_ids(self, text: str) -> list[int]:
        out = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=True)
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def texts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.tokenizer is None:
            return [max(1, round(len(t) / self.chars_per_token)) if t else 0 for t in texts]
        return [len(ids) for ids in self._encode(list(texts))]

    def text(self, text: str) -> int:
        return self.texts([text])[0]

    def chats(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [n + self.overhead_estimate for n in self.texts(texts)]
        return [n + self.overhead for n in self.texts(texts)]

    def chat(self, text: str) -> int:
        return self.chats([text])[0]

    @property
    def overhead_estimate(self) -> int:
        """Without a tokenizer: the chat template's own tokens around a turn (assumption: 8)."""
        return 8


def load_token_counter(folder: Path | None) -> TokenCounter:
    """The counter of the model in ``folder`` (its tokenizer, loaded offline), else the assumption."""
    if folder is None:
        return TokenCounter()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):  # a cached config.json without the tokenizer's files
        return TokenCounter()
    return TokenCounter(tokenizer, label=f"tokenizer and chat template of {folder}")
