"""``engines.isolated.ChildProcessEngine``: an engine in a child process returns what it would in-process,
and closing it (or killing its parent) leaves no process of it behind, grandchildren included.

The engines here are small ``FakeEngine`` variants (built in the child, so they live at module level); the
real vLLM engine runs through the same class in ``test_engine_vllm.py``."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from fakes import FakeEngine
from servers import tiny_judge_requests

from metareward.engines import isolated
from metareward.engines.base import ChoiceRequest
from metareward.engines.isolated import ChildProcessEngine, EngineNotReleased, EngineProcessDied

pytestmark = pytest.mark.slow  # each test starts Python processes (~4 s each on 2 cores)


class SpawningEngine(FakeEngine):
    """A fake engine that, like vLLM, starts a worker process of its own (here: one that ignores SIGTERM)."""

    def __init__(self, pid_file: str, hang_on_close: bool = False):
        super().__init__()
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        self.worker = subprocess.Popen([sys.executable, "-c", code])
        self.hang_on_close = hang_on_close
        Path(pid_file).write_text(f"{os.getpid()} {self.worker.pid}")

    def close(self) -> None:
        if self.hang_on_close:
            time.sleep(600)
        # like a leaky library: returns without ending its worker


class BrokenEngine(FakeEngine):
    def choice_probs(self, requests):
        raise ValueError("no choice tokens in this vocabulary")

    def generate(self, requests):
        os._exit(7)  # dies mid-call (out of memory, a segfault)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_outputs_equal_the_in_process_engine():
    reqs, _ = tiny_judge_requests(n=3)
    choice = [ChoiceRequest(id=f"c{i}", messages=r.messages, assistant_prefix="Score: ", choices=tuple("012345"))
              for i, r in enumerate(reqs)]
    local = FakeEngine()
    with ChildProcessEngine(FakeEngine, name="fake") as child:
        assert child.pid != os.getpid()
        assert list(child.generate(reqs)) == list(local.generate(reqs))
        assert list(child.choice_probs(choice)) == list(local.choice_probs(choice))
        assert list(child.generate([])) == []


def test_close_ends_the_child_and_its_workers(tmp_path):
    pid_file = tmp_path / "pids"
    engine = ChildProcessEngine(functools.partial(SpawningEngine, str(pid_file)), name="spawning",
                                term_grace=0.5)
    child, worker = map(int, pid_file.read_text().split())
    assert child == engine.pid and not gone(worker)
    engine.close()
    assert gone(child) and gone(worker)  # the worker ignored SIGTERM and the engine's close left it: SIGKILL
    assert set(engine.release["pids"]) >= {child, worker} and engine.release["left"] == []
    assert engine.release["cuda_free_before"] is None  # no CUDA here: nothing to compare
    engine.close()  # twice is safe
    with pytest.raises(RuntimeError, match="closed"):
        list(engine.generate(tiny_judge_requests()[0]))


def test_a_close_that_hangs_is_cut_short(tmp_path):
    pid_file = tmp_path / "pids"
    engine = ChildProcessEngine(functools.partial(SpawningEngine, str(pid_file), hang_on_close=True),
                                name="hanging", close_grace=1.0, term_grace=0.5)
    child, worker = map(int, pid_file.read_text().split())
    engine.close()
    assert gone(child) and gone(worker)


def test_killing_the_parent_ends_the_engine_processes(tmp_path):
    """The parent dies without closing (kill -9): the child notices and ends its whole group."""
    pid_file = tmp_path / "pids"
    script = (
        "import functools, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from metareward.engines.isolated import ChildProcessEngine\n"
        "from test_engine_isolated import SpawningEngine\n"
        "if __name__ == '__main__':\n"
        f"    e = ChildProcessEngine(functools.partial(SpawningEngine, {str(pid_file)!r}))\n"
        f"    open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "    time.sleep(600)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        child, worker = map(int, pid_file.read_text().split())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_gone([child, worker])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_errors_in_the_child_are_raised_here():
    engine = ChildProcessEngine(BrokenEngine, name="broken")
    try:
        req = ChoiceRequest(id="c", messages=({"role": "user", "content": "hi"},), assistant_prefix="", choices=("A",))
        with pytest.raises(RuntimeError, match=r"(?s)broken \(choice_probs, in the engine process\).*no choice tokens"):
            list(engine.choice_probs([req]))
        with pytest.raises(RuntimeError, match="unknown engine call 'shutdown'"):
            engine.call("shutdown")
        with pytest.raises(EngineProcessDied, match=f"pid {engine.pid}.* exited with code 7 during generate"):
            list(engine.generate(tiny_judge_requests()[0]))
    finally:
        engine.close()
    assert gone(engine.release["pids"][0])


def test_a_failing_start_is_reported_and_leaves_nothing():
    with pytest.raises(RuntimeError, match=r"(?s)start-up, in the engine process.*TypeError"):
        ChildProcessEngine(functools.partial(FakeEngine, no_such_argument=1), name="bad")


def test_processes_that_survive_close_are_an_error_naming_them(monkeypatch):
    engine = ChildProcessEngine(FakeEngine, name="fake", term_grace=0.1)
    pid = engine.pid
    real = isolated.alive_pids
    monkeypatch.setattr(isolated, "alive_pids", lambda pids: [pid] if pid in pids else real(pids))
    with pytest.raises(EngineNotReleased, match=rf"fake: processes of the closed engine are still alive: pids \[{pid}\]"):
        engine.close()
    monkeypatch.undo()
    assert wait_gone([pid])
