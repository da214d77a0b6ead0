"""Test-wide set-up: ``tests/`` on ``sys.path`` (helper modules), and a check that no test leaves a process behind.

Process hygiene: every process this pytest session starts inherits the environment variable
``METAREWARD_TEST_SESSION`` (a token unique to the session), also processes that later lose their parent
(an engine core orphaned when only a server's main process was killed: that is how vLLM's leaked). An
autouse fixture, at module and at test scope, lists the live processes carrying the token before and
after; a process that appeared and is still running ``LEFTOVER_GRACE_S`` seconds after the test (or
module) finished fails it, names the process, and is killed so it cannot spill into the next test.
Module scope covers module-scoped fixtures that start a server (they start after the module snapshot and
stop before the module check); test scope sees only what the test and its function fixtures started.

Garbage collection: a full collection walks every tracked object, and after the collection imports
torch, transformers and the package there are over half a million (~0.3-0.5 s a collection). The code
under test collects on purpose (``release_freed_memory``, 16 times in one fake two-iteration run), which
made a fake-engine run ten times slower here than on its own. So what is alive when a module's first test
starts (imports, module constants, session fixtures) is collected once and then frozen (``gc.freeze``):
later collections walk only what the module's tests create. Garbage is still collected as before: only
objects that survived a collection at a module boundary are exempt.

Not counted: helpers Python and torch start once per interpreter and keep on purpose (multiprocessing's
resource tracker and forkserver, inductor's compile workers). Zombies hold no memory and do not count.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

TOKEN_VAR = "METAREWARD_TEST_SESSION"
os.environ.setdefault(TOKEN_VAR, uuid.uuid4().hex)
TOKEN = os.environ[TOKEN_VAR]
SESSION_START = psutil.Process().create_time()  # nothing older can be ours: its environment is not read
LEFTOVER_GRACE_S = 20.0
SHARED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "torch._inductor.compile_worker")


def session_processes() -> dict[int, str]:
    """Live processes (not this one) that carry this session's token: pid -> command line."""
    found = {}
    me = os.getpid()
    for p in psutil.process_iter(["create_time"]):
        if p.pid == me or (p.info["create_time"] or 0) < SESSION_START:
            continue
        try:
            if p.environ().get(TOKEN_VAR) != TOKEN or p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.cmdline())[:300]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if not any(h in cmd for h in SHARED_HELPERS):
            found[p.pid] = cmd
    return found


def leftovers(before: dict[int, str], grace: float = LEFTOVER_GRACE_S) -> dict[int, str]:
    """Processes absent from ``before`` still alive after up to ``grace`` seconds (they may be exiting)."""
    deadline = time.monotonic() + grace
    while True:
        new = {pid: cmd for pid, cmd in session_processes().items() if pid not in before}
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.25)


def kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            psutil.Process(pid).kill()


def _check(what: str, before: dict[int, str], grace: float = LEFTOVER_GRACE_S) -> None:
    left = leftovers(before, grace)
    if left:
        kill(left)
        lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(left.items()))
        pytest.fail(f"{what} left {len(left)} process(es) running (now killed):\n{lines}", pytrace=False)


_frozen_for: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """At a module's first test, before its fixtures: collect, then freeze the survivors (see above)."""
    module = item.nodeid.split("::")[0]
    if _frozen_for[-1:] != [module]:
        _frozen_for[:] = [module]
        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_processes_module(request):
    before = session_processes()
    yield
    _check(f"module {request.module.__name__}", before)


@pytest.fixture(autouse=True)
def _no_leftover_processes(request):
    before = session_processes()
    yield
    _check(f"test {request.node.nodeid}", before)
