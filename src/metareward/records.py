"""The records that flow between stages, and their JSONL form.

Every record has a stable ``id`` built from its parents' ids, so a stage that is killed half way can
tell which records already exist and the rerun neither redoes nor duplicates them:

    prompt     p000123                      (or the id given in the prompts file)
    response   p000123/r3                   (index among the K samples, before dedup)
    judgment   p000123/r3/j7                (index among the N samples)
    meta       p000123/r3/j2-j7             (judgment in position A, then position B)
    pair       actor/p000123, judge/p000123

Records are plain dataclasses; ``to_json``/``from_json`` are field-for-field so a JSONL artifact is
readable by any tool. Unknown keys in a file are an error (a typo in a hand-written file should not be
silently ignored); missing optional keys take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metareward.errors import InputError
from metareward.files import atomic_write_lines


@dataclass
class Prompt:
    """One user instruction from the prompt pool (single turn, as in the paper)."""

    id: str
    text: str


@dataclass
class Response:
    """One actor sample. ``index`` is the sample's position among the K draws (kept after dedup)."""

    id: str
    prompt_id: str
    index: int
    text: str
    n_tokens: int = 0
    finished: bool = True  # False when the generation hit max_tokens


@dataclass
class Judgment:
    """One judge sample for one response.

    ``score`` is None when the judgment is invalid (no parseable score): invalid judgments are kept on
    disk for diagnostics but excluded from every mean, variance and pair. In ``constrained`` scoring
    mode ``score`` is the expected score under the next-token distribution over the digits 0..5 and
    ``score_probs`` holds that distribution; ``text`` then ends with ``Score: <most likely digit>``.
    """

    id: str
    response_id: str
    prompt_id: str
    index: int
    text: str
    score: float | None
    score_probs: list[float] | None = None
    n_tokens: int = 0


@dataclass
class MetaJudgment:
    """One meta-judge comparison of two judgments of the same response, in one order.

    ``verdict`` is "A" (the first-position judgment wins), "B", or None (tie or parse error).
    ``result`` is the paper's r^{mn}: +1 if A wins, -1 if B wins, 0 otherwise.
    """

    id: str
    prompt_id: str
    response_id: str
    judgment_a: str
    judgment_b: str
    text: str
    verdict: str | None
    result: int
    verdict_probs: list[float] | None = None  # [p(A), p(B)] in constrained mode


@dataclass
class PreferencePair:
    """A DPO example. ``kind`` is "actor" (response pair) or "judge" (judgment pair).

    ``prompt`` is the user turn the pair answers: the instruction for actor pairs, the filled
    LLM-as-a-Judge prompt for judge pairs. ``chosen``/``rejected`` are the assistant completions.
    """

    id: str
    kind: str
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R")


def to_json(record: Any) -> str:
    """One record as one JSON line (no trailing newline)."""
    return json.dumps(dataclasses.asdict(record), ensure_ascii=False)


def from_dict(cls: type[R], data: Any, where: str) -> R:
    """Build ``cls`` from a parsed JSON object, naming ``where`` (file:line) in any error."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise InputError(f"{where}: missing field(s) {missing} for {cls.__name__}")
    return cls(**data)


def iter_json_objects(path: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(file:line, line number, object)`` for each non-empty line of a JSONL file. A line that is not a JSON
    object is an ``InputError`` naming the file and line. The one reader every JSONL input goes through."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, lineno, obj


def read_jsonl(path: str | Path, cls: type[R]) -> list[R]:
    """Read every record of ``path``; a malformed line is an error naming file and line."""
    return list(iter_jsonl(path, cls))


def iter_jsonl(path: str | Path, cls: type[R]) -> Iterator[R]:
    for where, _, data in iter_json_objects(path):
        yield from_dict(cls, data, where)


def write_jsonl_atomic(path: str | Path, records: Iterable[Any]) -> int:
    """Write all records to ``path`` atomically (``files.atomic_write_lines``). Returns the count."""
    return atomic_write_lines(path, (to_json(r) + "\n" for r in records))
