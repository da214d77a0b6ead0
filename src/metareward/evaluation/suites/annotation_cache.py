"""A judge-annotation cache in the eval folder, like alpaca_eval's ``annotations_seed*.json``.

One judgment (a verdict text, or the judge's label probabilities) is stored under a key built from
everything that decides it: the judge (model and engine), the template, the prompt, the two outputs
**in the order the judge saw them**, and the decoding settings. So a rerun, a rerun after a kill, and a
new model whose output happens to equal an old one all reuse the stored judgment instead of asking the
judge again; a changed template, judge or order is a different key.

Storage: JSONL, one ``{"key", "kind", "value"}`` line per judgment, appended and fsync-ed as soon as the
engine yields it (so a kill loses at most the judgment in flight). A torn last line (a write cut by the
kill) is ignored and truncated away on open; a malformed line elsewhere is an error naming the file and
line, since it means the file was edited or corrupted, not interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from metareward.errors import InputError

Req = TypeVar("Req")
Out = TypeVar("Out")


def annotation_key(judge: str, template: str, prompt: str, output_a: str, output_b: str, settings: Any) -> str:
    """SHA-256 over (judge, template, prompt, output shown first, output shown second, settings)."""
    blob = json.dumps([judge, template, prompt, output_a, output_b, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnnotationCache:
    """The judgments stored in ``path`` (created on the first write); see the module docstring."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values: dict[str, Any] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete, _, torn = data.rpartition(b"\n")  # a write ends with its newline: after the last one is torn
        lines = complete.split(b"\n") if complete else []
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError as e:
                raise InputError(f"{self.path}:{lineno}: malformed annotation cache line ({e})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or "value" not in entry:
                raise InputError(f"{self.path}:{lineno}: field 'key' (string) and 'value' expected")
            self.values[entry["key"]] = entry["value"]
        if torn:
            with self.path.open("r+b") as f:
                f.truncate(len(data) - len(torn))

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __len__(self) -> int:
        return len(self.values)

    def get(self, key: str) -> Any:
        return self.values[key]

    def put_many(self, items: Iterable[tuple[str, str, Any]]) -> None:
        """Append ``(key, kind, value)`` entries; each line is flushed and fsync-ed before the next."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, kind, value in items:
                f.write(json.dumps({"key": key, "kind": kind, "value": value}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                self.values[key] = value

    def annotate(
        self,
        requests: Sequence[Req],
        keys: Sequence[str],
        kind: str,
        call: Callable[[Sequence[Req]], Iterator[Out]],
        encode: Callable[[Out], tuple[str, Any]],
        request_id: Callable[[Req], str],
        log: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """The stored value for every request, asking ``call`` (the judge) only for keys not stored yet.

        ``encode`` turns an engine output into ``(request id, JSON-able value)``. Requests with equal keys
        are judged once. Returns values by request id.
        """
        if len(requests) != len(keys):
            raise ValueError(f"{len(requests)} requests for {len(keys)} keys")
        by_id = {request_id(r): k for r, k in zip(requests, keys, strict=True)}
        todo, seen = [], set()
        for r, k in zip(requests, keys, strict=True):
            if k not in self.values and k not in seen:
                todo.append(r)
                seen.add(k)
        log(f"[eval] {kind}: {len(requests) - len(todo)} of {len(requests)} judgments cached, {len(todo)} to judge")
        if todo:

            def stream() -> Iterator[tuple[str, str, Any]]:
                for out in call(todo):
                    rid, value = encode(out)
                    yield by_id[rid], kind, value

            self.put_many(stream())
        missing = [rid for rid, k in by_id.items() if k not in self.values]
        if missing:
            raise RuntimeError(f"{kind}: the judge returned no output for {missing[:5]}")
        return {rid: self.values[k] for rid, k in by_id.items()}
