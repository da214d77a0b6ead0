"""The known-order set: the ranked responses the judge-agreement evaluation uses by default (docs/method.md §5.5).

(A user's own ranked set, e.g. an Open Assistant export, is read by ``metareward.ranked.load_ranked``.)

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
from importlib import resources

from metareward.ranked import RankedPrompt, RankedResponse

TRUNCATE_FRACTION = 0.4
OTHER_ANSWER_OFFSET = 7  # question i gets the answer of question (i + 7) mod n


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
