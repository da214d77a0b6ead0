"""One response checked against its prompt's constraints, and the ``verifier`` judge's score.

``verify`` runs the IFEval checks of ``if-verifiable`` (offline, ``checks.check_response``) and returns
how many constraints the response satisfies, strict (the response as is) and loose (IFEval's loose
variants: without first/last line or ``*`` markup). ``verifier_score`` turns the strict share into the
paper's judge scale: score = 5 x satisfied / constraints, so a response meeting every constraint scores 5
and one meeting none scores 0, exactly as ``Score: x`` of the additive rubric would range.

A checker that raises is not a score: ``verify`` reports it as an error (``Verification.error``), and the
judge turns it into an invalid judgment with a counted reason (``stages.judge``), never a 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metareward.verifiable.checks import check_response
from metareward.verifiable.constraints import Constraint

SCALE = 5.0  # the paper's judge scale: 0..5


@dataclass(frozen=True)
class Verification:
    """The result of checking one response: per constraint, strict and loose pass (in constraint order),
    or ``error`` (the checker raised; the lists are then empty)."""

    strict: tuple[bool, ...] = ()
    loose: tuple[bool, ...] = ()
    error: str | None = None

    @property
    def total(self) -> int:
        return len(self.strict)

    @property
    def satisfied(self) -> int:
        return sum(self.strict)

    @property
    def all_strict(self) -> bool:
        return bool(self.strict) and all(self.strict)

    @property
    def all_loose(self) -> bool:
        return bool(self.loose) and all(self.loose)


def verify(prompt_id: str, prompt_text: str, constraints: Sequence[Constraint], response: str) -> Verification:
    """Check ``response`` against ``constraints`` (at least one; an empty list is a ``ValueError``: a
    prompt without constraints has nothing to verify)."""
    if not constraints:
        raise ValueError(f"prompt {prompt_id}: no constraints to verify")
    row = {"key": prompt_id, "prompt": prompt_text, "instruction_id_list": [c.id for c in constraints],
           "kwargs": [dict(c.kwargs) for c in constraints]}
    _seed_langdetect()
    try:
        checked = check_response(row, response, benchmark="ifeval")
    except Exception as e:  # a checker bug or bad arguments: reported, never scored
        return Verification(error=f"{type(e).__name__}: {e}")
    results = checked["results"]
    if checked["skipped"] or len(results) != len(constraints):
        return Verification(error=f"checked {len(results)} of {len(constraints)} constraints "
                                  f"(skipped: {checked['skipped']})")
    return Verification(tuple(bool(r["strict"]) for r in results), tuple(bool(r["loose"]) for r in results))


def _seed_langdetect() -> None:
    """The case checks ask ``langdetect`` whether the text is English; it samples, so unseeded the same
    response could pass once and fail the next time. Seeded, every call gives the same answer."""
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0


def verifier_score(v: Verification) -> float:
    """The verifier judge's score on the 0-5 scale: 5 x share of constraints satisfied (strict)."""
    return round(SCALE * v.satisfied / v.total, 6)


def verdict_text(constraints: Sequence[Constraint], v: Verification) -> str:
    """The judgment text a verifier writes: which constraints failed, then ``Score: x`` (for readers of
    judgments.jsonl; nothing parses it)."""
    failed = [c.id for c, ok in zip(constraints, v.strict, strict=True) if not ok]
    lines = [f"Constraints satisfied: {v.satisfied} of {v.total}."]
    if failed:
        lines.append("Failed: " + ", ".join(failed) + ".")
    lines.append(f"Score: {verifier_score(v):g}")
    return "\n".join(lines)
