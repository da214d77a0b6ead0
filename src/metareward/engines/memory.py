"""The process's resident memory: read it, measure its peak over a stretch of work, give freed heap back.

Why: a run generates and trains in one process, and on a CPU both stages leave large freed heaps behind
(the hf engine asks glibc to keep freed memory for speed, ``hf.device.keep_freed_memory``). The loop
records each stage's peak resident memory in the iteration's manifest, and hands freed heap back to the
OS between generation and training (``release_freed_memory``), so one stage's leftovers do not add to
the next one's peak (figures: ``docs/performance.md``, "Iteration costs: DPO warm-up and memory").

Linux only, and no torch: elsewhere the readings are None and releasing does nothing.
``PeakMemory`` resets the kernel's peak (``VmHWM``) through ``/proc/self/clear_refs`` where it may; where
it may not, a stage's peak is the process's peak so far (``reset`` False in its reading).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from pathlib import Path

GIB = float(1 << 30)
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def resident_memory(status: Path = STATUS) -> dict[str, int] | None:
    """``{"rss": bytes resident now, "peak": highest since start or the last reset}`` from ``status``
    (``VmRSS`` and ``VmHWM`` of /proc/self/status, in kB there); None where there is no such file or it
    lacks either line."""
    try:
        text = status.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    if len(fields) != 2:
        return None
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def reset_peak(clear_refs: Path = CLEAR_REFS) -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current resident memory ("5" written to
    /proc/self/clear_refs, Linux >= 4.0). True if it took effect."""
    try:
        clear_refs.write_text("5")
    except OSError:
        return False
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> bool:
    """Collect garbage (cycles can hold tensors), then ask glibc to return every freed page of its heaps
    to the OS (``malloc_trim(0)``). True if glibc's trim ran. Changes no live object: what it frees was
    already free, so the next allocations page-fault fresh memory again (a cost paid once per stage)."""
    gc.collect()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class PeakMemory:
    """Peak resident memory over a ``with`` block: ``peak_gib`` (highest resident memory while it ran),
    ``end_gib`` (resident at its end), ``reset`` (False: the peak could not be reset at the start, so
    ``peak_gib`` is the process's peak since it started). All None where memory cannot be read."""

    def __init__(self) -> None:
        self.peak_gib: float | None = None
        self.end_gib: float | None = None
        self.reset = False

    def __enter__(self) -> PeakMemory:
        self.reset = reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        now = resident_memory()
        if now is not None:
            self.peak_gib = round(now["peak"] / GIB, 3)
            self.end_gib = round(now["rss"] / GIB, 3)

    def record(self) -> dict[str, float | bool | None]:
        """The manifest's form: peak and end resident memory in GiB, and whether the peak is this block's."""
        return {"peak_gib": self.peak_gib, "end_gib": self.end_gib, "since_reset": self.reset}
