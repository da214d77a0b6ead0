"""Progress of a generation pass that tells the truth: one line, its rate and an ETA from work done.

A pass's first chunk in a process pays for more than its work: loading the engine, building kernels,
faulting in buffers for new shapes. A rate taken from it (what a progress bar does after its first
update) overstates the time left many times over. So here:

* work is counted in samples (a request of n samples counts n; a choice read counts 1), and generated
  tokens are shown beside them;
* the rate is samples per second over the *finished chunks that were not a warm-up* (the first chunk a
  process runs of a pass is one), in this process and in the chunk log of an earlier, interrupted
  attempt (each logged chunk carries its seconds, ``ChunkTiming``), so a resumed pass has an ETA at once;
* the ETA is the samples of the unfinished chunks over that rate, less the time the current chunk has
  run. Before any such chunk exists the line says so instead of guessing.

On a terminal the line is rewritten in place; elsewhere (logs, CI) it is printed once per finished chunk.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ChunkTiming:
    """One finished chunk: its samples, generated tokens and seconds; ``warm_up`` if it was the first
    chunk of its pass in its process (its seconds include start-up costs, so it gives no rate)."""

    samples: int
    tokens: int
    seconds: float
    warm_up: bool


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """The progress line of one pass (see the module docstring)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.chunk_start = self.start
        self.done = 0  # samples of finished chunks (logged ones included)
        self.partial = 0  # samples of the chunk in flight
        self.tokens = 0
        self.timings: list[ChunkTiming] = []
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def resumed(self, timings: Sequence[ChunkTiming]) -> None:
        """Chunks finished by an earlier attempt (read from the chunk log)."""
        for t in timings:
            self.done += t.samples
            self.tokens += t.tokens
            self.timings.append(t)
        self._show()

    def chunk_started(self) -> None:
        self.chunk_start = self.clock()
        self.partial = 0

    def advance(self, samples: int, tokens: int) -> None:
        """An output of the chunk in flight arrived."""
        self.partial += samples
        self.tokens += tokens
        if self.tty:
            self._show()

    def chunk_done(self, timing: ChunkTiming) -> None:
        """The chunk in flight finished (its tokens were counted by ``advance``)."""
        self.done += timing.samples
        self.partial = 0
        self.timings.append(timing)
        self._show()

    def rate(self) -> tuple[float, float] | None:
        """(samples/s, tokens/s) over the finished chunks that were not a warm-up, or None."""
        steady = [t for t in self.timings if not t.warm_up and t.seconds > 0]
        seconds = sum(t.seconds for t in steady)
        if not steady or seconds <= 0:
            return None
        return sum(t.samples for t in steady) / seconds, sum(t.tokens for t in steady) / seconds

    def eta(self) -> float | None:
        rate = self.rate()
        if rate is None:
            return None
        left = (self.total - self.done) / rate[0] - (self.clock() - self.chunk_start)
        return max(left, 0.0)

    def line(self) -> str:
        done = min(self.done + self.partial, self.total)
        text = f"{self.label}: {done:,}/{self.total:,} samples"
        if self.tokens:
            text += f", {self.tokens:,} tokens"
        rate = self.rate()
        if rate is None:
            return text + ("" if self.done >= self.total else "; rate and ETA after the first chunk past warm-up")
        text += f"; {rate[0]:,.2f} samples/s" + (f", {rate[1]:,.0f} tokens/s" if rate[1] else "")
        if self.done < self.total:
            text += f"; ETA {format_duration(self.eta() or 0.0)}"
        return text

    def close(self) -> None:
        """The final line: work done, its rate, and the time this process spent on it."""
        text = self.line() + f"; {format_duration(self.clock() - self.start)} here"
        self._write(text, final=True)

    def _show(self) -> None:
        self._write(self.line(), final=False)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            pad = " " * max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
