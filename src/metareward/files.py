"""Atomic file writes: a file either exists whole or not at all, whenever the process is killed.

Each writer writes to ``<name>.tmp`` beside the target, flushes and fsyncs it, and renames it over the
target (``os.replace``, atomic on POSIX within one file system). A kill mid-write leaves at most a stale
``.tmp`` that the next write overwrites. This is the lowest layer of the package: it imports nothing from
``metareward`` except ``errors``, so the config, the records and the run directory's manifest can all
write through it.

Disk: a write that fails for a reason of the filesystem's (full, over quota, read-only, ...) raises
``DiskError``, an ``InputError``: one line naming the path, the OS's reason and the free space, which the
CLI prints without a traceback. ``atomic_write_lines`` removes its ``.tmp`` on every failure path;
``disk_errors`` turns such failures of larger writers (a model save, a trainer's checkpoint, where
safetensors and torch report the OS error only in their message) into the same error;
``require_free_space`` stops before a large write that cannot fit; ``remove_temporaries`` sweeps what a
killed writer left (``*.tmp``, ``model.tmp<pid>``, ``tmp-checkpoint-*``) when a run resumes under its lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from metareward.errors import InputError

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})
"""OS errors that mean the filesystem refused a write, wherever in the program they surface."""

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|errno:? ?(\d+)", re.IGNORECASE)
_TEMPORARY = re.compile(r".+\.tmp\d*|tmp-checkpoint-\d+")


class DiskError(InputError):
    """A write failed, or would, for lack of space or another refusal of the filesystem (one line)."""


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write ``lines`` (each written as given, so each should end in a newline) to ``path`` atomically;
    creates the parent folder. Returns how many lines were written. On any failure the ``.tmp`` is
    removed; an ``OSError`` becomes a ``DiskError``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise disk_error(path, "writing", e) from e
        raise
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); creates the parent folder."""
    atomic_write_lines(path, (text,))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON (non-JSON values through ``str``) plus a final newline, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


# ---------------------------------------------------------------------- disk space and OS write errors


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; bytes below 1 KiB as ``"512 B"``."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the filesystem that holds ``path`` or its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(path: str | Path, need: int, what: str) -> None:
    """Stop with a ``DiskError`` naming ``path``, the need and the free space before writing about
    ``need`` bytes there that cannot fit."""
    free = free_bytes(path)
    if free < need:
        raise DiskError(
            f"{path}: {what} needs about {format_bytes(need)} but only {format_bytes(free)} is free there; "
            "free space (or use a run_dir on a larger disk) and rerun the same command to resume")


def disk_errno(exc: BaseException | None) -> int | None:
    """The OS error number behind ``exc`` when it is one of ``DISK_ERRNOS``: an ``OSError``'s own, or the
    ``os error N`` / ``No space left on device`` that safetensors, torch and others put in their message
    (also in the exceptions it was raised from)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc.errno
        text = str(exc)
        for m in _OS_ERROR_IN_TEXT.finditer(text):
            number = int(m.group(1) or m.group(2))
            if number in DISK_ERRNOS:
                return number
        for number in sorted(DISK_ERRNOS):
            if os.strerror(number) in text:
                return number
        exc = exc.__cause__ or exc.__context__
    return None


def disk_error(path: str | Path, what: str, exc: BaseException, number: int | None = None) -> DiskError:
    """The one-line ``DiskError`` for ``exc``, raised while ``what`` (e.g. "saving the model") at ``path``."""
    if number is None and isinstance(exc, OSError):
        number = exc.errno
    reason = os.strerror(number) if number else (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    with contextlib.suppress(OSError):
        reason += f" ({format_bytes(free_bytes(path))} free there)"
    return DiskError(f"{path}: {what} failed: {reason}. Free space or fix the filesystem, then rerun the "
                     "same command to resume")


@contextlib.contextmanager
def disk_errors(path: str | Path, what: str, sweep: str | Path | None = None) -> Iterator[None]:
    """Turn a failure of the filesystem inside the block (``disk_errno``) into a ``DiskError``; other
    exceptions pass unchanged. On any failure, first remove the temporaries under ``sweep``."""
    try:
        yield
    except BaseException as e:
        if sweep is not None:
            remove_temporaries(sweep)
        number = None if isinstance(e, DiskError) or not isinstance(e, Exception) else disk_errno(e)
        if number is None:
            raise
        raise disk_error(path, what, e, number) from e


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is what an interrupted writer leaves: ``<name>.tmp``, ``<name>.tmp<pid>`` (a model
    folder being saved), ``tmp-checkpoint-<step>`` (a trainer's checkpoint being saved)."""
    return _TEMPORARY.fullmatch(path.name) is not None


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete every temporary file and folder (``is_temporary``) under ``root``; returns what went, sorted.
    Only while holding the run's lock (``runlock``): another writer's temporaries are its work in progress."""
    removed: list[Path] = []
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temporary(Path(d))]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            removed.append(Path(folder) / name)
            dirs.remove(name)
        for name in files:
            if is_temporary(Path(name)):
                with contextlib.suppress(FileNotFoundError):
                    (Path(folder) / name).unlink()
                removed.append(Path(folder) / name)
    return sorted(removed)
