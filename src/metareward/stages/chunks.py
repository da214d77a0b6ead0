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

from tqdm.auto import tqdm

from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest

Req = TypeVar("Req")
Out = TypeVar("Out")


class ChunkLog:
    """Append-only log of finished chunks for one in-flight stage (see module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, list[dict[str, Any]]] = {}
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
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def append(self, chunk: int, outputs: list[dict[str, Any]]) -> None:
        line = json.dumps({"chunk": chunk, "outputs": outputs}, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.done[chunk] = outputs

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
    done_requests = sum(len(chunks[c]) for c in log.done if c < len(chunks))
    # A chunk counts as done only if it holds exactly this chunk's request ids (same order).
    bar = tqdm(total=len(requests), initial=done_requests, desc=desc, unit="req", dynamic_ncols=True)
    try:
        for c, chunk in enumerate(chunks):
            if c in log.done and [o["id"] for o in log.done[c]] == [request_id(r) for r in chunk]:
                continue
            outputs: dict[str, dict[str, Any]] = {}
            for out in call(chunk):
                enc = encode(out)
                outputs[enc["id"]] = enc
                bar.update(1)
            missing = [request_id(r) for r in chunk if request_id(r) not in outputs]
            if missing:
                raise RuntimeError(f"{desc}: engine returned no output for {missing[:5]}")
            log.append(c, [outputs[request_id(r)] for r in chunk])
    finally:
        bar.close()
    result: dict[str, dict[str, Any]] = {}
    for c in range(len(chunks)):
        for enc in log.done[c]:
            result[enc["id"]] = enc
    return result


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
        done = self._run(name, requests, lambda rs: self.engine().generate(rs), self.chunk_size, lambda r: r.n)
        outs = {rid: GenerationOutput(**enc) for rid, enc in done.items()}
        self.generated_tokens += sum(sum(o.n_tokens) for o in outs.values())
        return outs

    def choices(self, name: str, requests: Sequence[ChoiceRequest]) -> dict[str, ChoiceOutput]:
        done = self._run(name, requests, lambda rs: self.engine().choice_probs(rs), self.choice_chunk_size)
        return {rid: ChoiceOutput(**enc) for rid, enc in done.items()}

    def _run(self, name: str, requests: Sequence[Any], call: Callable, chunk_size: int,
             weight: Callable[[Any], int] = lambda r: 1) -> dict[str, dict[str, Any]]:
        path = self.log_path(name)
        self.logs.append(path)
        return run_chunked(path, requests, call, dataclasses.asdict, chunk_size, self.label(name), weight=weight)

    def remove_logs(self) -> None:
        for path in self.logs:
            path.unlink(missing_ok=True)
