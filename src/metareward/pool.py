"""Reading a prompt pool: the file the loop draws each iteration's prompts from.

Accepted forms (chosen by extension):
* ``.jsonl``: one JSON object per line with the prompt under ``prompt``, ``text`` or ``instruction``
  (first present wins) and an optional string ``id``;
* ``.txt``: one prompt per non-empty line;
* ``builtin:NAME``: a prompt set shipped inside the package (``builtin:seed_prompts``).

Ids default to ``p{line:06d}``. Empty prompts, duplicate ids and malformed lines are errors that name
the file and line; exact duplicate prompt texts are dropped (first kept), since the paper samples
distinct prompts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from metareward.errors import InputError
from metareward.records import Prompt, iter_json_objects

TEXT_KEYS = ("prompt", "text", "instruction")


BUILTIN = "builtin:"


def resolve_pool_path(path: str | Path) -> Path:
    """``builtin:NAME`` is ``NAME.jsonl`` shipped in ``metareward/data``; anything else is a path."""
    text = str(path)
    if text.startswith(BUILTIN):
        name = text[len(BUILTIN) :]
        builtin = Path(__file__).parent / "data" / f"{name}.jsonl"
        if not builtin.is_file():
            shipped = sorted(p.stem for p in builtin.parent.glob("*.jsonl"))
            raise InputError(f"prompts: no built-in prompt set {name!r} (shipped: {shipped})")
        return builtin
    return Path(path)


def load_prompt_pool(path: str | Path) -> list[Prompt]:
    """The pool's prompts in file order, exact duplicate texts dropped (see the module docstring)."""
    path = resolve_pool_path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompts file not found")
    prompts: list[Prompt] = []
    ids: dict[str, int] = {}
    texts: set[str] = set()
    for where, lineno, text, pid in _pool_lines(path):
        if pid in ids:
            raise InputError(f"{where}: duplicate id {pid!r} (first on line {ids[pid]})")
        ids[pid] = lineno
        if text.strip() in texts:
            continue
        texts.add(text.strip())
        prompts.append(Prompt(id=pid, text=text.strip()))
    if not prompts:
        raise InputError(f"{path}: no prompts found")
    return prompts


def _pool_lines(path: Path) -> Iterator[tuple[str, int, str, str]]:
    """``(file:line, line number, prompt text, id)`` of each non-empty line. JSONL lines go through
    ``records.iter_json_objects``, the one JSONL reader, so a malformed line is named as for any record."""
    if path.suffix == ".jsonl":
        for where, lineno, obj in iter_json_objects(path):
            key = next((k for k in TEXT_KEYS if k in obj), None)
            if key is None:
                raise InputError(f"{where}: no prompt field (expected one of {list(TEXT_KEYS)})")
            text = obj[key]
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: field '{key}' must be a non-empty string")
            pid = obj.get("id", f"p{lineno:06d}")
            if not isinstance(pid, str) or not pid or "/" in pid:
                raise InputError(f"{where}: field 'id' must be a non-empty string without '/'")
            yield where, lineno, text, pid
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", lineno, line.rstrip("\n"), f"p{lineno:06d}"
