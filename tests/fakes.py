"""A deterministic fake engine for stage and loop logic (the real engine is tested separately).

Texts and probabilities are pure functions of (request id, seed, sample index), so two runs agree and
a resumed run can be compared with an uninterrupted one. ``fail_after`` raises after that many
outputs, to simulate a crash mid-stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


class Crash(RuntimeError):
    pass


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, fail_after: int | None = None, free_text_scores: bool = True):
        self.fail_after = fail_after
        self.emitted = 0
        self.free_text_scores = free_text_scores
        self.calls: list[int] = []

    def _tick(self) -> None:
        if self.fail_after is not None and self.emitted >= self.fail_after:
            raise Crash(f"simulated crash after {self.emitted} outputs")
        self.emitted += 1

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        self.calls.append(len(requests))
        for r in reversed(requests):  # any order is allowed
            self._tick()
            user = r.messages[-1]["content"]
            texts = []
            for k in range(r.n):
                h = _h(r.id, r.seed, k)
                if "Judgment A:" in user:
                    texts.append(f"Judgment {'AB'[h % 2]} is more accurate.\nWinner: Judgment {'AB'[h % 2]}")
                elif "additive 5-point" in user:
                    score = h % 6
                    body = f"The response earns {score} points."
                    texts.append(f"{body}\nScore: {score}" if self.free_text_scores and h % 7 else body)
                else:
                    texts.append("answer " + "x" * (h % 40) + (" dup" if k % 3 == 2 else f" {h % 1000}"))
            yield GenerationOutput(r.id, tuple(Completion(t, len(t) // 4 + 1, True) for t in texts))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        for r in requests:
            self._tick()
            weights = [1 + _h(r.id, c) % 9 for c in r.choices]
            total = sum(weights)
            yield ChoiceOutput(id=r.id, probs=[w / total for w in weights])
