"""Chunk logs: how a stage's model passes survive a kill and resume to the same records.

A pass's requests are cut into fixed chunks, in a fixed order (``cut_chunks``). Each finished chunk is
appended to the pass's log (in the loop ``IterationLayout.chunk_log``: ``.work/<pass>-<stage settings
hash>.chunks.jsonl``) as one line and fsynced. On resume a torn last line (the kill came mid-write) is cut
off, finished chunks are skipped and the rest are run again. Because chunks are fixed and each is seeded
the same way, a resumed stage produces the same records as one that was never interrupted.

``ChunkedPasses`` is the ``stages.common.Passes`` that the loop, EFT building and the judge-agreement
evaluation hand to the stage functions; ``run_chunked`` is the one loop over chunks they all go through.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest
from metareward.files import disk_errors
from metareward.stages.progress import ChunkTiming, Progress

Req = TypeVar("Req")
Out = TypeVar("Out")


class ChunkLog:
    """Append-only log of finished chunks for one in-flight stage (see module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, list[dict[str, Any]]] = {}
        self.timing: dict[int, tuple[float, bool]] = {}  # chunk -> (seconds, warm-up), where logged
        if path.is_file():
            self._load_and_repair()

    def _load_and_repair(self) -> None:
        good_bytes = 0
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn last write
                try:
                    entry = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self.done[entry["chunk"]] = entry["outputs"]
                if "seconds" in entry:
                    self.timing[entry["chunk"]] = (float(entry["seconds"]), bool(entry.get("warm_up")))
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def append(self, chunk: int, outputs: list[dict[str, Any]], seconds: float | None = None,
               warm_up: bool = False) -> None:
        """Log a finished chunk; ``seconds`` (and whether it was a warm-up) let a resumed pass's progress
        line estimate its rate at once (``stages.progress``)."""
        entry: dict[str, Any] = {"chunk": chunk, "outputs": outputs}
        if seconds is not None:
            entry.update(seconds=round(seconds, 3), warm_up=warm_up)
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        # a full disk mid-line leaves a torn line, cut off on resume; the error is one line (files.DiskError)
        with disk_errors(self.path, "logging a finished chunk"), self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.done[chunk] = outputs
        if seconds is not None:
            self.timing[chunk] = (seconds, warm_up)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def cut_chunks(requests: Sequence[Req], size: int, weight: Callable[[Req], int] = lambda r: 1) -> list[Sequence[Req]]:
    """``requests`` cut, in order, into consecutive chunks whose ``weight`` sums to at most ``size``
    (a request heavier than ``size`` alone). Generation passes weigh a request by its samples, so a
    chunk holds about ``size`` sequences whether a request asks for 1 (a meta-judge battle) or 11 (a
    judge's N judgments) and the engine's batches stay full."""
    chunks: list[Sequence[Req]] = []
    start, total = 0, 0
    for i, r in enumerate(requests):
        w = weight(r)
        if i > start and total + w > size:
            chunks.append(requests[start:i])
            start, total = i, 0
        total += w
    if start < len(requests):
        chunks.append(requests[start:])
    return chunks


def run_chunked(
    log_path: Path,
    requests: Sequence[Req],
    call: Callable[[Sequence[Req]], Iterator[Out]],
    encode: Callable[[Out], dict[str, Any]],
    chunk_size: int,
    desc: str,
    request_id: Callable[[Req], str] = lambda r: r.id,  # type: ignore[attr-defined]
    weight: Callable[[Req], int] = lambda r: 1,
) -> dict[str, dict[str, Any]]:
    """Run ``requests`` through ``call`` in fixed chunks, logging each finished chunk.

    Returns every output (encoded as a dict with an ``id``) keyed by request id, whether computed
    now or found in the log from an earlier, interrupted attempt. ``chunk_size`` bounds a chunk's total
    ``weight`` (``cut_chunks``).
    """
    log = ChunkLog(log_path)
    chunks = cut_chunks(requests, chunk_size, weight)
    progress = Progress(desc, sum(weight(r) for r in requests))
    # A chunk counts as done only if it holds exactly this chunk's request ids (same order).
    logged = [c for c, chunk in enumerate(chunks)
              if c in log.done and [o["id"] for o in log.done[c]] == [request_id(r) for r in chunk]]
    progress.resumed([_timing(chunks[c], log.done[c], log.timing.get(c), weight) for c in logged])
    warm_up = True  # the first chunk this process runs of the pass pays its start-up costs
    try:
        for c, chunk in enumerate(chunks):
            if c in logged:
                continue
            progress.chunk_started()
            outputs: dict[str, dict[str, Any]] = {}
            by_id = {request_id(r): r for r in chunk}
            for out in call(chunk):
                enc = encode(out)
                outputs[enc["id"]] = enc
                request = by_id.get(enc["id"])
                progress.advance(weight(request) if request is not None else 1, _tokens(enc))
            missing = [request_id(r) for r in chunk if request_id(r) not in outputs]
            if missing:
                raise RuntimeError(f"{desc}: engine returned no output for {missing[:5]}")
            seconds = progress.clock() - progress.chunk_start
            log.append(c, [outputs[request_id(r)] for r in chunk], seconds, warm_up)
            progress.chunk_done(ChunkTiming(sum(weight(r) for r in chunk), sum(_tokens(o) for o in outputs.values()),
                                            seconds, warm_up))
            warm_up = False
    finally:
        progress.close()
    result: dict[str, dict[str, Any]] = {}
    for c in range(len(chunks)):
        for enc in log.done[c]:
            result[enc["id"]] = enc
    return result


def _tokens(encoded: dict[str, Any]) -> int:
    """Generated tokens of one encoded output (0 for a choice read)."""
    n = encoded.get("n_tokens")
    return int(sum(n)) if isinstance(n, list) else 0


def _timing(chunk: Sequence[Req], outputs: list[dict[str, Any]], logged: tuple[float, bool] | None,
            weight: Callable[[Req], int]) -> ChunkTiming:
    """A logged chunk's timing (a log written before timings were: no seconds, so no rate)."""
    seconds, warm_up = logged if logged is not None else (0.0, True)
    return ChunkTiming(sum(weight(r) for r in chunk), sum(_tokens(o) for o in outputs), seconds, warm_up)


class ChunkedPasses:
    """A stage's model passes (``stages.common.Passes``) through chunk logs, so a kill loses at most one
    chunk of each pass and a rerun produces the same records.

    Pass ``name`` runs through ``run_chunked`` with the log ``log_path(name)`` and the progress label
    ``label(name)``; generation passes in chunks of at most ``chunk_size`` sequences (a request of n
    samples counts n), choice passes of ``choice_chunk_size`` requests (default: ``chunk_size``). The chunking must not change between a kill and its rerun
    (a chunk counts as done only if it holds the same request ids), and an engine may seed a whole chunk
    from one generator, so it is part of what fixes the records. ``engine()`` is called only when a chunk
    must run: a stage whose chunks are all logged needs no model. ``generated_tokens`` sums the tokens of
    every generation pass's outputs (logged ones included); ``remove_logs`` deletes the logs once the
    stage's records are safely written.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        log_path: Callable[[str], Path],
        chunk_size: int,
        label: Callable[[str], str] = str,
        choice_chunk_size: int | None = None,
    ):
        self.engine = engine
        self.log_path = log_path
        self.chunk_size = chunk_size
        self.choice_chunk_size = choice_chunk_size or chunk_size
        self.label = label
        self.generated_tokens = 0
        self.logs: list[Path] = []

    def generate(self, name: str, requests: Sequence[GenerationRequest]) -> dict[str, GenerationOutput]:
        done = self._run(name, requests, lambda rs: self.engine().generate(rs), GenerationOutput.to_columns,
                         self.chunk_size, lambda r: r.n)
        outs = {rid: GenerationOutput.from_columns(enc) for rid, enc in done.items()}
        self.generated_tokens += sum(o.generated_tokens for o in outs.values())
        return outs

    def choices(self, name: str, requests: Sequence[ChoiceRequest]) -> dict[str, ChoiceOutput]:
        done = self._run(name, requests, lambda rs: self.engine().choice_probs(rs), dataclasses.asdict,
                         self.choice_chunk_size)
        return {rid: ChoiceOutput(**enc) for rid, enc in done.items()}

    def _run(self, name: str, requests: Sequence[Any], call: Callable, encode: Callable[[Any], dict],
             chunk_size: int, weight: Callable[[Any], int] = lambda r: 1) -> dict[str, dict[str, Any]]:
        path = self.log_path(name)
        self.logs.append(path)
        return run_chunked(path, requests, call, encode, chunk_size, self.label(name), weight=weight)

    def remove_logs(self) -> None:
        for path in self.logs:
            path.unlink(missing_ok=True)
