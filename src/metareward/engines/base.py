"""The generation-engine interface every stage talks to.

A stage builds a whole list of requests and hands it to the engine at once; the engine decides how to
batch, order and schedule them, and yields each output as soon as it is done (in any order; outputs
carry the request id). Two kinds of request:

* ``GenerationRequest``: chat messages in, ``n`` sampled assistant completions out. The engine applies
  the model's chat template, stops at end-of-turn, and honours ``max_tokens``. ``seed`` makes the
  samples reproducible for a given engine, model and batch composition.
* ``ChoiceRequest``: chat messages plus a forced start of the assistant turn (``assistant_prefix``), and a
  closed set of single-token continuations (``choices``). The engine returns the next-token probability
  of each choice, renormalised over the set. This is how the ``constrained`` scoring mode reads a score
  (``...Score: `` then one of "0".."5") or a verdict (``...Winner: Judgment `` then "A" or "B") from a
  model too small to follow the output format on its own.

A ``GenerationOutput`` holds one ``Completion`` per sample (text, token count, whether it stopped on
its own), as vLLM's ``RequestOutput.outputs`` does, so callers iterate samples instead of zipping
parallel lists. Logs store an output in the parallel-list form they always had
(``GenerationOutput.to_columns`` / ``from_columns``), so logs written by earlier code still resume.

A ``GenerationRequest`` may carry a ``ChoiceFollowUp``: after each sample, the distribution over its
choices is read after the assistant text ``follow_up.prefix(sample_text)``, exactly the ``ChoiceRequest``
``(messages, prefix(text), choices)`` would give. An engine that can continue the finished sequence's own
keys and values (``hf``) answers it in each ``Completion.choice_probs`` at the cost of the few tokens
where the prefix differs from what was sampled; one that cannot leaves ``choice_probs`` None and the
caller asks ``choice_probs`` itself (the stages do: ``stages.judge``, ``stages.meta_judge``).

Engines: ``hf`` (transformers, CPU or one GPU; the default), ``vllm`` and ``openai`` (see their modules).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings for one request. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512


@dataclass(frozen=True)
class ChoiceFollowUp:
    """Read the next-token distribution over ``choices`` after each sample: the assistant turn is
    ``prefix(sample_text)`` (e.g. the judgment cut before its score, then ``"\nScore: "``). ``prefix``
    must be picklable (a module-level function or a ``functools.partial`` of one): engines in other
    processes receive the requests pickled."""

    prefix: Callable[[str], str]
    choices: tuple[str, ...]


@dataclass(frozen=True)
class GenerationRequest:
    id: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    seed: int = 0
    follow_up: ChoiceFollowUp | None = None


@dataclass(frozen=True)
class Completion:
    """One sample of a ``GenerationRequest``: its ``text`` (end-of-turn token removed), the tokens it
    generated (``n_tokens``, the stop token counted where there was one), and whether it stopped on its
    own (``finished``; False: cut at ``max_tokens``). ``choice_probs``: the engine's answer to the
    request's ``follow_up`` for this sample (probabilities over its choices, renormalised, as
    ``ChoiceOutput.probs``); None where there was no follow-up or the engine left the read to the caller."""

    text: str
    n_tokens: int
    finished: bool
    choice_probs: list[float] | None = None


@dataclass(frozen=True)
class GenerationOutput:
    """The ``n`` completions of one request, one ``Completion`` per sample in sample order (sample ``k``
    is the ``k``-th draw of the request's seed, so ids built from ``k`` stay stable)."""

    id: str
    samples: tuple[Completion, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", tuple(self.samples))  # a list given is frozen too

    @property
    def texts(self) -> list[str]:
        """Every sample's text, in sample order."""
        return [s.text for s in self.samples]

    @property
    def generated_tokens(self) -> int:
        """Tokens generated over all samples."""
        return sum(s.n_tokens for s in self.samples)

    def to_columns(self) -> dict[str, Any]:
        """The JSON form chunk logs and caches store: ``id`` and the samples as parallel lists
        (``texts``, ``n_tokens``, ``finished``, ``choice_probs``: None when no sample holds an answer,
        else one entry per sample). The form engines returned before outputs held ``Completion``s, kept so
        that a log written then resumes now (and one written now reads as it always did)."""
        probs = [s.choice_probs for s in self.samples]
        return {"id": self.id, "texts": self.texts, "n_tokens": [s.n_tokens for s in self.samples],
                "finished": [s.finished for s in self.samples],
                "choice_probs": None if all(p is None for p in probs) else probs}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> GenerationOutput:
        """The output ``to_columns`` stored (``choice_probs`` may be absent: answer logs never held it)."""
        texts, n_tokens, finished = columns["texts"], columns["n_tokens"], columns["finished"]
        probs = columns.get("choice_probs") or [None] * len(texts)
        return cls(columns["id"], tuple(Completion(t, n, f, p)
                                        for t, n, f, p in zip(texts, n_tokens, finished, probs, strict=True)))


@dataclass(frozen=True)
class ChoiceRequest:
    id: str
    messages: tuple[Message, ...]
    assistant_prefix: str
    choices: tuple[str, ...]


@dataclass
class ChoiceOutput:
    """Probabilities of each choice as the next token, renormalised to sum to 1 over ``choices``."""

    id: str
    probs: list[float]


class Engine(abc.ABC):
    """A generation backend. Subclasses implement the two batch calls and ``close``."""

    name: str = "engine"

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        """Yield one output per request, as each finishes (any order)."""

    @abc.abstractmethod
    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        """Yield one output per request, as each finishes (any order)."""

    def close(self) -> None:
        """Free the model and any accelerator memory (before training, or at the end of a stage)."""

    def abort(self) -> None:
        """End the engine at once, abandoning any call in flight (an interrupt or SIGTERM: the loop's chunk
        logs keep what finished). Engines with processes of their own end them here without waiting for
        their work; by default the same as ``close``."""
        self.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
