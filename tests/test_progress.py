"""Progress lines (metareward.stages.progress): rates and ETAs from work done, never from a warm-up chunk,
carried across chunks and across a resume through the chunk log."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import pytest

from metareward.stages.chunks import ChunkLog, run_chunked
from metareward.stages.progress import ChunkTiming, Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_warm_up_chunk_gives_no_rate_and_no_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("[iter 1] judge", 100, out, clock)
    p.chunk_started()
    clock.now += 300.0  # loading the engine and building kernels
    p.advance(20, 400)
    p.chunk_done(ChunkTiming(20, 400, 300.0, warm_up=True))
    assert p.rate() is None and p.eta() is None
    assert p.line() == "[iter 1] judge: 20/100 samples, 400 tokens; rate and ETA after the first chunk past warm-up"


def test_rate_and_eta_come_from_steady_chunks_only():
    clock, out = Clock(), io.StringIO()
    p = Progress("[iter 1] judge", 100, out, clock)
    for timing in (ChunkTiming(20, 400, 300.0, True), ChunkTiming(20, 500, 4.0, False), ChunkTiming(20, 300, 6.0, False)):
        p.advance(timing.samples, timing.tokens)
        p.chunk_done(timing)
    assert p.rate() == (4.0, 80.0)  # 40 samples and 800 tokens in 10 s
    p.chunk_started()
    clock.now += 2.0
    assert p.eta() == pytest.approx(40 / 4.0 - 2.0)  # 40 samples left, 2 s into the current chunk
    assert p.line() == "[iter 1] judge: 60/100 samples, 1,200 tokens; 4.00 samples/s, 80 tokens/s; ETA 00:08"
    clock.now += 30.0
    assert p.eta() == 0.0  # never negative


def test_lines_on_a_terminal_are_rewritten_and_elsewhere_printed_per_chunk():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = Clock()
    log, tty = io.StringIO(), Tty()
    for stream in (log, tty):
        p = Progress("x", 4, stream, clock)
        p.resumed([])
        p.chunk_started()
        p.advance(2, 0)
        p.chunk_done(ChunkTiming(2, 0, 1.0, True))
        p.chunk_done(ChunkTiming(2, 0, 1.0, False))
        p.close()
    assert log.getvalue().splitlines() == [
        "x: 0/4 samples; rate and ETA after the first chunk past warm-up",
        "x: 2/4 samples; rate and ETA after the first chunk past warm-up",
        "x: 4/4 samples; 2.00 samples/s",
        "x: 4/4 samples; 2.00 samples/s; 00:00 here",
    ]
    assert tty.getvalue().count("\n") == 1 and tty.getvalue().startswith("\r")


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 * 2 + 65)] == ["00:00", "01:00", "01:01", "2:01:05"]


@dataclass
class Req:
    id: str
    n: int = 2


@dataclass
class Out:
    id: str
    n_tokens: list[int]


def _call(fail_at: int | None = None):
    calls = {"chunks": 0}

    def call(chunk):
        calls["chunks"] += 1
        if fail_at is not None and calls["chunks"] == fail_at:
            raise RuntimeError("killed")
        time.sleep(0.02)
        for r in chunk:
            yield Out(r.id, [3] * r.n)

    return call


def encode(o: Out) -> dict:
    return {"id": o.id, "n_tokens": o.n_tokens}


def test_a_resumed_pass_has_its_rate_from_the_log_at_once(tmp_path, capsys):
    reqs = [Req(f"r{i}") for i in range(8)]
    path = tmp_path / "judge.chunks.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        run_chunked(path, reqs, _call(fail_at=3), encode, 4, "judge", weight=lambda r: r.n)
    log = ChunkLog(path)
    assert sorted(log.timing) == [0, 1]
    assert log.timing[0][1] is True and log.timing[1][1] is False  # the first chunk was the warm-up
    assert all(seconds > 0 for seconds, _ in log.timing.values())
    capsys.readouterr()
    out = run_chunked(path, reqs, _call(), encode, 4, "judge", weight=lambda r: r.n)
    assert sorted(out) == [r.id for r in reqs]
    first = capsys.readouterr().err.splitlines()[0]
    # before any chunk of this attempt ran: 2 chunks of 4 samples done, the steady one gives the rate
    assert first.startswith("judge: 8/16 samples, 24 tokens; ") and "samples/s" in first and "ETA" in first
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["chunk"], x["warm_up"]) for x in lines] == [(0, True), (1, False), (2, True), (3, False)]


def test_a_log_without_timings_gives_no_rate(tmp_path, capsys):
    reqs = [Req(f"r{i}") for i in range(4)]
    path = tmp_path / "old.chunks.jsonl"
    path.write_text(json.dumps({"chunk": 0, "outputs": [encode(Out(r.id, [1, 1])) for r in reqs[:2]]}) + "\n")
    run_chunked(path, reqs, _call(), encode, 4, "old", weight=lambda r: r.n)
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "old: 4/8 samples, 4 tokens; rate and ETA after the first chunk past warm-up"
