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

A ``GenerationRequest`` may carry a ``ChoiceFollowUp``: after each sample, the distribution over its
choices is read after the assistant text ``follow_up.prefix(sample_text)``, exactly the ``ChoiceRequest``
``(messages, prefix(text), choices)`` would give. An engine that can continue the finished sequence's own
keys and values (``hf``) answers it in ``GenerationOutput.choice_probs`` at the cost of the few tokens
where the prefix differs from what was sampled; one that cannot leaves ``choice_probs`` None and the
caller asks ``choice_probs`` itself (the stages do: ``stages.judge``, ``stages.meta_judge``).

Engines: ``hf`` (transformers, CPU or one GPU; the default), ``vllm`` and ``openai`` (see their modules).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

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


@dataclass
class GenerationOutput:
    """The ``n`` completions of one request: text (end-of-turn token removed), token counts, and
    whether each stopped on its own (False: cut at ``max_tokens``). ``choice_probs``: for a request
    with a ``follow_up`` the engine answered, each sample's probabilities over the follow-up's choices
    (renormalised, as ``ChoiceOutput.probs``), an entry None where the engine left that sample's read
    to the caller; None when there was no follow-up or the engine left all of it to the caller."""

    id: str
    texts: list[str]
    n_tokens: list[int]
    finished: list[bool]
    choice_probs: list[list[float] | None] | None = None


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
