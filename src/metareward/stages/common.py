"""What the stages share: the single user turn, per-request seeds, and ``Passes``, how a stage runs the model.

A stage function (``actor.run``, ``judge.run``, ``meta_judge.run``) builds its requests, hands them to
``Passes`` and turns the outputs into records. ``Passes`` decides *how* requests run: the loop and EFT
go through chunk logs (``metareward.stages.chunks.ChunkedPasses``) so a kill loses at most one chunk of each
pass; evaluation uses its own caches. Each pass has a name, unique across stages (``actor``, ``judge``,
``judge_score``, ``meta_judge``, ``meta_verdict``), which callers use to name its log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from metareward.engines.base import ChoiceOutput, ChoiceRequest, GenerationOutput, GenerationRequest, Message
from metareward.seeds import request_seed

__all__ = ["Passes", "constrained_answers", "request_seed", "user_turn"]


class _Record(Protocol):
    """Any record with an id (``Judgment``, ``MetaJudgment``)."""

    id: str


Rec = TypeVar("Rec", bound=_Record)


class Passes(Protocol):
    """Runs a stage's model passes; each returns every request's output keyed by request id."""

    def generate(self, name: str, requests: Sequence[GenerationRequest]) -> Mapping[str, GenerationOutput]:
        """Sampled text for every request (pass ``name``)."""
        ...

    def choices(self, name: str, requests: Sequence[ChoiceRequest]) -> Mapping[str, ChoiceOutput]:
        """The next-token distribution over each request's choices (pass ``name``; constrained scoring)."""
        ...


def user_turn(text: str) -> tuple[Message, ...]:
    """Single-turn chat messages: the paper puts every prompt (actor, judge, meta-judge) in the user turn."""
    return ({"role": "user", "content": text},)


def constrained_answers(
    passes: Passes,
    pass_name: str,
    records: Sequence[Rec],
    engine_answer: Callable[[Rec], Sequence[float] | None],
    choice_requests: Callable[[list[Rec]], Sequence[ChoiceRequest]],
) -> dict[str, Sequence[float]]:
    """Constrained mode's choice probabilities of every record (a judgment's score digits, a
    meta-judgment's verdict letters), keyed by record id.

    The engine's own answer where it gave one (``engine_answer``: the ``hf`` engine reads each sample's
    ``ChoiceFollowUp`` from its own cache); the records it left unanswered (other engines, chunks logged
    before) are read again in pass ``pass_name`` from ``choice_requests(unread)``, which prefills prompt
    and text anew. Either way the same numbers, up to the engine's arithmetic; no pass runs when every
    record was answered."""
    probs = {r.id: answer for r in records if (answer := engine_answer(r)) is not None}
    unread = [r for r in records if r.id not in probs]
    if unread:
        read = passes.choices(pass_name, choice_requests(unread))
        probs.update({r.id: read[r.id].probs for r in unread})
    return probs
