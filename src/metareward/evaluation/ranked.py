"""Prompts with ranked responses: the input of the judge-agreement evaluation (spec §5.5).

File format (JSONL, one prompt a line; an Open-Assistant-like export)::

    {"id": "q1", "prompt": "...", "responses": [{"text": "...", "rank": 0}, {"text": "...", "rank": 1}]}

``rank`` 0 is the best; larger is worse; equal ranks are ties. ``id`` is optional (``line<N>``).
At least two responses per prompt. Any other shape is an ``InputError`` naming the file, line and field.

``known_order_set()`` is the set shipped with metareward (``metareward/data/known_order.jsonl``,
20 questions with a complete, correct answer written for this project): each question gets four
responses whose order is known by construction, not by human raters --

    rank 0  the complete answer;
    rank 1  the same answer truncated mid-sentence at 40% of its characters (relevant but incomplete);
    rank 2  the complete answer to a *different* question of the set (fluent, on-topic for another
            question, irrelevant here);
    rank 2  an off-topic paragraph (``off_topic.jsonl``: notices, diary text, chat), tied with the above.

What it measures: whether a judge separates a complete relevant answer from an incomplete one, and
any relevant answer from an irrelevant one -- the first rubric points of the judge prompt. It does not
measure finer quality judgments among good answers (that is what human-ranked data such as Open
Assistant is for), so high agreement here is necessary, not sufficient, for a good judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from metareward.errors import InputError
from metareward.records import iter_json_objects

TRUNCATE_FRACTION = 0.4
OTHER_ANSWER_OFFSET = 7  # question i gets the answer of question (i + 7) mod n


@dataclass(frozen=True)
class RankedResponse:
    text: str
    rank: float
    kind: str = ""  # known-order set: complete | truncated | other_question | off_topic


@dataclass(frozen=True)
class RankedPrompt:
    id: str
    prompt: str
    responses: tuple[RankedResponse, ...]


def load_ranked(path: str | Path) -> list[RankedPrompt]:
    """Read a ranked-responses JSONL file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ranked-responses file not found")
    out: list[RankedPrompt] = []
    seen: set[str] = set()
    for where, lineno, row in iter_json_objects(path):
        pid = str(row.get("id", f"line{lineno}"))
        if pid in seen:
            raise InputError(f"{where}: id: duplicate id {pid!r}")
        seen.add(pid)
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: prompt: expected a non-empty string")
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise InputError(f"{where}: responses: expected a list of at least 2 responses")
        items = []
        for k, r in enumerate(responses):
            if not isinstance(r, dict) or not isinstance(r.get("text"), str):
                raise InputError(f"{where}: responses[{k}].text: expected a string")
            rank = r.get("rank")
            if isinstance(rank, bool) or not isinstance(rank, (int, float)):
                raise InputError(f"{where}: responses[{k}].rank: expected a number (0 = best)")
            items.append(RankedResponse(r["text"], float(rank), str(r.get("kind", ""))))
        out.append(RankedPrompt(pid, prompt, tuple(items)))
    if not out:
        raise InputError(f"{path}: no prompts")
    return out


def truncate(text: str, fraction: float = TRUNCATE_FRACTION) -> str:
    """The first ``fraction`` of ``text``, cut back to a word boundary (mid-sentence, no ending)."""
    cut = text[: int(len(text) * fraction)]
    return cut.rsplit(" ", 1)[0].rstrip(" ,;:.") if " " in cut else cut


def _data_rows(name: str) -> list[dict]:
    text = resources.files("metareward.data").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def known_order_set() -> list[RankedPrompt]:
    """The shipped set whose order is known by construction (see module docstring). Deterministic."""
    qa = _data_rows("known_order.jsonl")
    off = [r["text"] for r in _data_rows("off_topic.jsonl")]
    out = []
    for i, row in enumerate(qa):
        other = qa[(i + OTHER_ANSWER_OFFSET) % len(qa)]["answer"]
        out.append(
            RankedPrompt(
                id=row["id"],
                prompt=row["prompt"],
                responses=(
                    RankedResponse(row["answer"], 0, "complete"),
                    RankedResponse(truncate(row["answer"]), 1, "truncated"),
                    RankedResponse(other, 2, "other_question"),
                    RankedResponse(off[i % len(off)], 2, "off_topic"),
                ),
            )
        )
    return out
