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

import json
from pathlib import Path

from metareward.errors import InputError
from metareward.records import Prompt

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
    path = resolve_pool_path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompts file not found")
    prompts: list[Prompt] = []
    ids: dict[str, int] = {}
    texts: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object")
                key = next((k for k in TEXT_KEYS if k in obj), None)
                if key is None:
                    raise InputError(f"{path}:{lineno}: no prompt field (expected one of {list(TEXT_KEYS)})")
                text = obj[key]
                if not isinstance(text, str) or not text.strip():
                    raise InputError(f"{path}:{lineno}: field '{key}' must be a non-empty string")
                pid = obj.get("id", f"p{lineno:06d}")
                if not isinstance(pid, str) or not pid or "/" in pid:
                    raise InputError(f"{path}:{lineno}: field 'id' must be a non-empty string without '/'")
            else:
                text, pid = line.rstrip("\n"), f"p{lineno:06d}"
            if pid in ids:
                raise InputError(f"{path}:{lineno}: duplicate id {pid!r} (first on line {ids[pid]})")
            ids[pid] = lineno
            if text.strip() in texts:
                continue
            texts.add(text.strip())
            prompts.append(Prompt(id=pid, text=text.strip()))
    if not prompts:
        raise InputError(f"{path}: no prompts found")
    return prompts
