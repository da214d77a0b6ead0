"""Prompts with human-ranked responses: one input format for EFT data and for judge-agreement evaluation.

Both uses read the same kind of file (an Open-Assistant-like export), so both go through ``load_ranked``
and a file that one accepts, the other accepts too. JSONL, one prompt a line::

    {"id": "oa-0001", "prompt": "How do I boil an egg?",
     "responses": [{"text": "Place the egg in boiling water for 7 minutes...", "rank": 0},
                   {"text": "Eggs are laid by hens.", "rank": 1}],
     "meta": {"anything": "kept, not read"}}

* ``rank``: an integer >= 0, 0 is the best (Open Assistant's convention); equal ranks are ties; a prompt
  needs at least two responses and two different ranks (otherwise there is no order to agree with);
* ``id``: optional (default ``q<line, 6 digits>``), a non-empty string without ``/`` (example ids are
  built as ``<id>/r<k>/j<i>``), unique in the file;
* ``kind``: optional per response, a label the agreement report groups mean scores by (the shipped
  known-order set uses ``complete``, ``truncated``, ``other_question``, ``off_topic``);
* ``meta``: optional, any JSON, carried along and never read.

Any other key, and any other shape, is an ``InputError`` naming the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.records import iter_json_objects

PROMPT_KEYS = {"id", "prompt", "responses", "meta"}
RESPONSE_KEYS = {"text", "rank", "kind"}


@dataclass(frozen=True)
class RankedResponse:
    text: str
    rank: int
    kind: str = ""


@dataclass(frozen=True)
class RankedPrompt:
    id: str
    prompt: str
    responses: tuple[RankedResponse, ...]
    meta: Any = None

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.responses]

    @property
    def ranks(self) -> list[int]:
        return [r.rank for r in self.responses]


def _response(where: str, k: int, r: object) -> RankedResponse:
    fld = f"responses[{k}]"
    if not isinstance(r, dict) or not {"text", "rank"} <= set(r) or not set(r) <= RESPONSE_KEYS:
        raise InputError(f"{where}: field '{fld}' must be an object with 'text' and 'rank' (and optionally 'kind')")
    if not isinstance(r["text"], str) or not r["text"].strip():
        raise InputError(f"{where}: field '{fld}.text' must be a non-empty string")
    rank = r["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise InputError(f"{where}: field '{fld}.rank' must be an integer >= 0 (0 = best), got {rank!r}")
    kind = r.get("kind", "")
    if not isinstance(kind, str):
        raise InputError(f"{where}: field '{fld}.kind' must be a string, got {kind!r}")
    return RankedResponse(r["text"], rank, kind)


def load_ranked(path: str | Path) -> list[RankedPrompt]:
    """Read a ranked-responses JSONL file (format in the module docstring); errors name file, line, field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ranked-responses file not found")
    out: list[RankedPrompt] = []
    seen: dict[str, int] = {}
    for where, lineno, obj in iter_json_objects(path):
        unknown = sorted(set(obj) - PROMPT_KEYS)
        if unknown:
            raise InputError(
                f"{where}: unknown field(s) {unknown} (allowed: {sorted(PROMPT_KEYS)}; put extras in 'meta')"
            )
        pid = obj.get("id", f"q{lineno:06d}")
        if not isinstance(pid, str) or not pid or "/" in pid:
            raise InputError(f"{where}: field 'id' must be a non-empty string without '/', got {pid!r}")
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: field 'prompt' must be a non-empty string")
        responses = obj.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise InputError(f"{where}: field 'responses' must be a list of at least 2 ranked responses")
        items = tuple(_response(where, k, r) for k, r in enumerate(responses))
        if len({r.rank for r in items}) < 2:
            raise InputError(f"{where}: field 'responses': all ranks are equal, so there is no order to agree with")
        out.append(RankedPrompt(pid, prompt.strip(), items, obj.get("meta")))
    if not out:
        raise InputError(f"{path}: no ranked prompts found")
    return out


PAIR_KEYS = {"id", "prompt", "chosen", "rejected", "subset", "meta"}


def _pair_objects(path: Path):
    if path.suffix == ".json":  # a JSON array of pair objects (how some RewardBench exports come)
        import json

        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON array of objects")
        for i, obj in enumerate(rows, start=1):
            if not isinstance(obj, dict):
                raise InputError(f"{path}: item {i}: expected an object")
            yield f"{path}: item {i}", i, obj
    else:
        yield from iter_json_objects(path)


def load_preference_pairs(path: str | Path) -> list[RankedPrompt]:
    """RewardBench-style preference pairs as ranked prompts (chosen rank 0, rejected rank 1).

    JSONL (or a ``.json`` array), one pair per object: ``prompt``, ``chosen``, ``rejected`` (non-empty
    strings), optional ``subset`` (string; kept as ``meta["subset"]`` so agreement can be split by it),
    optional ``id`` (string or integer, no ``/``; default ``p<line, 6 digits>``) and ``meta``. Errors name
    the file, line (or item) and field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: preference-pairs file not found")
    out: list[RankedPrompt] = []
    seen: dict[str, str] = {}
    for where, lineno, obj in _pair_objects(path):
        unknown = sorted(set(obj) - PAIR_KEYS)
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown} (allowed: {sorted(PAIR_KEYS)})")
        for fld in ("prompt", "chosen", "rejected"):
            if not isinstance(obj.get(fld), str) or not obj[fld].strip():
                raise InputError(f"{where}: field {fld!r} must be a non-empty string")
        subset = obj.get("subset", "")
        if not isinstance(subset, str):
            raise InputError(f"{where}: field 'subset' must be a string, got {subset!r}")
        raw_id = obj.get("id", f"p{lineno:06d}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise InputError(f"{where}: field 'id' must be a string or an integer, got {raw_id!r}")
        pid = str(raw_id)
        if not pid or "/" in pid:
            raise InputError(f"{where}: field 'id' must be non-empty and without '/', got {pid!r}")
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = where
        meta = {"subset": subset, "meta": obj.get("meta")}
        responses = (RankedResponse(obj["chosen"], 0, "chosen"), RankedResponse(obj["rejected"], 1, "rejected"))
        out.append(RankedPrompt(pid, obj["prompt"].strip(), responses, meta))
    if not out:
        raise InputError(f"{path}: no preference pairs found")
    return out


def is_preference_file(path: str | Path) -> bool:
    """Whether the first object of ``path`` is a preference pair (has ``chosen``), not a ranked prompt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: agreement-set file not found")
    for _, _, obj in _pair_objects(path):
        return "chosen" in obj
    return False


def load_agreement_set(path: str | Path) -> list[RankedPrompt]:
    """A ranked-responses file or a RewardBench-style preference file, told apart by the first object."""
    return load_preference_pairs(path) if is_preference_file(path) else load_ranked(path)


__all__ = ["RankedPrompt", "RankedResponse", "load_agreement_set", "load_preference_pairs", "load_ranked"]
