"""``runlock``: one writer per run directory (docs/artifacts.md, "One writer at a time").

The holder runs in a separate Python process where the test needs a second process (flock locks belong
to an open file, and a killed process's lock must be released by the kernel)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fakes import FakeEngine

from metareward import runlock
from metareward.config import dump_config
from metareward.errors import InputError
from metareward.layout import RunLayout
from metareward.runlock import Holder, RunLocked, read_holder, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from metareward.runlock import run_lock
    with run_lock(sys.argv[1], command=sys.argv[2]):
        print("locked", flush=True)
        time.sleep(600)
""")


def start_holder(run_dir: Path, command: str = "run") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), command], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=30)


def test_the_holder_record_names_the_process_and_is_emptied_on_release(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with run_lock(layout, command="eval") as handle:
        record = json.loads(layout.lock.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] == "eval" and record["started"].endswith(" UTC")
        assert read_holder(layout.lock) == handle.holder and handle.took_over is None
    assert layout.lock.read_text() == ""
    assert read_holder(layout.lock) is None


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    holder = start_holder(tmp_path / "run", "run")
    try:
        with pytest.raises(RunLocked) as e, run_lock(tmp_path / "run", command="eval"):
            pytest.fail("the lock was taken twice")
        message = str(e.value)
        assert isinstance(e.value, InputError) and "\n" not in message
        recorded = read_holder(RunLayout(tmp_path / "run").lock)
        assert f"`metareward run` (pid {holder.pid} on {socket.gethostname()}, started {recorded.started})" in message
        assert f"kill {holder.pid}" in message and "rerun the same command" in message
        assert recorded.pid == holder.pid  # the refused writer left the holder's record alone
    finally:
        stop(holder)


def test_a_killed_holder_leaves_a_lock_the_next_writer_takes_over(tmp_path):
    holder = start_holder(tmp_path / "run")
    stop(holder, signal.SIGKILL)
    layout = RunLayout(tmp_path / "run")
    assert read_holder(layout.lock).pid == holder.pid  # the record stays: SIGKILL released nothing itself
    with run_lock(layout) as handle:
        assert handle.took_over is not None and handle.took_over.pid == holder.pid
        assert read_holder(layout.lock).pid == os.getpid()


def test_a_terminated_holder_releases_cleanly(tmp_path):
    holder = start_holder(tmp_path / "run")
    stop(holder, signal.SIGINT)  # KeyboardInterrupt: the with block's exit empties the record
    with run_lock(tmp_path / "run") as handle:
        assert handle.took_over is None


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path / "run") as outer, run_lock(tmp_path / "run", command="pairs") as inner:
        assert inner is outer
    with run_lock(tmp_path / "run") as again:
        assert again.took_over is None


def record(layout: RunLayout, **fields) -> Holder:
    h = Holder(**{"pid": 1, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC",
                  "command": "run", "pid_start": None, **fields})
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.lock.write_text(json.dumps(h.__dict__) + "\n")
    return h


def test_a_live_recorded_holder_on_this_host_is_refused_even_when_the_lock_is_free(tmp_path):
    # what a filesystem whose locks do not reach this process looks like: the lock is free, the record
    # names a process that runs (here a sleeping child, with its real start time)
    layout = RunLayout(tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record(layout, pid=sleeper.pid, pid_start=runlock._process_start(sleeper.pid))
        with pytest.raises(RunLocked, match=f"pid {sleeper.pid} on"), run_lock(layout):
            pass
        # the same pid with another start time is a reused pid: the holder is gone, the lock is taken over
        record(layout, pid=sleeper.pid, pid_start=12.0)
        with run_lock(layout) as handle:
            assert handle.took_over.pid == sleeper.pid
    finally:
        stop(sleeper)


def test_another_hosts_record_is_taken_over_on_a_local_filesystem_only(tmp_path, monkeypatch):
    layout = RunLayout(tmp_path / "run")
    other = record(layout, host="node-7", pid=4242)
    monkeypatch.setattr(runlock, "is_network_filesystem", lambda path: True)
    with pytest.raises(RunLocked) as e, run_lock(layout):
        pass
    assert "pid 4242 on node-7" in str(e.value) and f"delete {layout.lock}" in str(e.value)
    assert read_holder(layout.lock) == other
    monkeypatch.setattr(runlock, "is_network_filesystem", lambda path: False)
    with run_lock(layout) as handle:  # a local filesystem: the free lock proves the holder is gone
        assert handle.took_over == other


def test_without_flock_the_record_alone_decides(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    layout = RunLayout(tmp_path / "run")
    with run_lock(layout):
        assert read_holder(layout.lock).pid == os.getpid()
    record(layout, host="node-7", pid=4242)
    with pytest.raises(RunLocked, match="node-7"), run_lock(layout):
        pass


def test_filesystem_type_reads_the_longest_mount_point(tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:40 / {tmp_path}/shared rw,relatime shared:9 - nfs4 server:/export rw,vers=4.2\n"
        f"41 22 0:41 / {tmp_path}/fuse\\040dir rw - fuse.sshfs host:/x rw\n"
    )
    monkeypatch.setattr(runlock, "MOUNTINFO", mountinfo)
    assert runlock.filesystem_type(tmp_path / "shared" / "run") == "nfs4"
    assert runlock.filesystem_type(tmp_path / "shared") == "nfs4"
    assert runlock.filesystem_type(tmp_path / "sharedx") == "ext4"
    assert runlock.filesystem_type(tmp_path / "fuse dir" / "run") == "fuse.sshfs"
    assert runlock.is_network_filesystem(tmp_path / "shared" / "run")
    assert runlock.is_network_filesystem(tmp_path / "fuse dir")
    assert not runlock.is_network_filesystem(tmp_path / "local")


def test_an_unreadable_record_still_refuses_a_second_writer(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        RunLayout(tmp_path / "run").lock.write_text("{torn")
        with pytest.raises(RunLocked, match="record in the lock file is unreadable"), run_lock(tmp_path / "run"):
            pass
    finally:
        stop(holder)


def test_holder_alive_on_this_host_by_pid(tmp_path):
    me = Holder.current("run")
    assert runlock.holder_alive(me) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert runlock.holder_alive(Holder(child.pid, socket.gethostname(), "x", "run")) is False
    assert runlock.holder_alive(Holder(os.getpid(), "elsewhere", "x", "run")) is None


# ---------------------------------------------------------------- `metareward run` while a run writes


class SecondRunMidStage(FakeEngine):
    """Generates as ``FakeEngine``; on its first call, while the first run holds the lock mid-stage, it
    starts a second ``metareward run`` on the same run directory and keeps what it said."""

    def __init__(self, config: Path):
        super().__init__()
        self.config = config
        self.second: subprocess.CompletedProcess | None = None
        self.seconds = 0.0

    def generate(self, requests):
        if self.second is None:
            start = time.monotonic()
            self.second = subprocess.run([sys.executable, "-m", "metareward.cli", "run", str(self.config)],
                                         capture_output=True, text=True, timeout=300)
            self.seconds = time.monotonic() - start
        yield from super().generate(requests)


@pytest.mark.slow  # a `metareward run` subprocess
def test_a_second_run_stops_within_seconds_and_the_first_run_is_undisturbed(tmp_path):
    from test_preemption import make_cfg, records, run

    ref = make_cfg(tmp_path / "ref")
    run(ref, FakeEngine())
    cfg = make_cfg(tmp_path / "busy")
    dump_config(cfg, tmp_path / "busy.yaml")
    engine = SecondRunMidStage(tmp_path / "busy.yaml")
    run(cfg, engine)
    second = engine.second
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stdout == ""  # stopped before anything else: no plan printed, nothing loaded
    line = second.stderr.strip()
    assert "\n" not in line and line.startswith(f"metareward: error: {cfg.run_dir}: in use by `metareward run` "
                                                f"(pid {os.getpid()} on {socket.gethostname()}, started ")
    # the bound, for the whole second process (interpreter start, config, lock): the lock itself
    # never waits (LOCK_NB)
    assert engine.seconds < 5
    assert records(cfg.run_dir) == records(ref.run_dir)
    assert read_holder(RunLayout(cfg.run_dir).lock) is None


def test_writes_into_run(tmp_path):
    from metareward.runlock import writes_into_run

    run = tmp_path / "run"
    assert writes_into_run(run, run / "eval") and writes_into_run(run, run)
    assert not writes_into_run(run, tmp_path / "run-eval") and not writes_into_run(None, run / "eval")


@pytest.mark.slow  # a lock holder process
def test_eval_into_a_locked_run_directory_stops_at_once(tmp_path, capsys):
    from test_preemption import make_cfg, run

    from metareward import cli

    cfg = make_cfg(tmp_path)
    run(cfg, FakeEngine())
    holder = start_holder(Path(cfg.run_dir), "run")
    capsys.readouterr()  # the finished run's progress lines
    try:
        code = cli.main(["eval", "--run-dir", cfg.run_dir, "--parts", "length", "--limit", "1"])
    finally:
        stop(holder)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"metareward: error: {cfg.run_dir}: in use by `metareward run` (pid {holder.pid} on ")


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError) as e, run_lock(blocked / "run"):
        pass
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{RunLayout(blocked / 'run').lock}: opening the run directory's lock file failed: ")
