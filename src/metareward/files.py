"""Atomic file writes: a file either exists whole or not at all, whenever the process is killed.

Each writer writes to ``<name>.tmp`` beside the target, flushes and fsyncs it, and renames it over the
target (``os.replace``, atomic on POSIX within one file system). A kill mid-write leaves at most a stale
``.tmp`` that the next write overwrites. This is the lowest layer of the package: it imports nothing from
``metareward`` except ``errors``, so the config, the records and the run directory's manifest can all
write through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write ``lines`` (each written as given, so each should end in a newline) to ``path`` atomically;
    creates the parent folder. Returns how many lines were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); creates the parent folder."""
    atomic_write_lines(path, (text,))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON (non-JSON values through ``str``) plus a final newline, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
