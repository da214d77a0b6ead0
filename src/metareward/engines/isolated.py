"""An engine run in a child process, so that closing it returns all of its memory by process exit.

Why: an inference library's in-process cleanup (vLLM's ``shutdown`` + ``cleanup_dist_env_and_memory``)
is best effort; a leaked engine-core process or CUDA context keeps gigabytes of the GPU while DPO starts
on the same device. ``ChildProcessEngine(factory)`` builds ``factory()`` in a child process started with
``spawn`` (no inherited CUDA state, the same interpreter and ``sys.path``) and forwards each call over a
pipe. The child:

* makes itself a process-group leader (``os.setpgrp``): every process the engine starts under it (vLLM's
  engine core and workers) is in that group, so ``close`` can signal all of them at once;
* watches its parent: when the parent dies without closing it (killed, crashed), it SIGKILLs its whole
  group, so nothing is orphaned.

``abort()`` (after an interrupt or SIGTERM) skips the request and ends the group at once.

``close()``: asks the child to close its engine and exit, waits up to ``close_grace`` seconds, then SIGTERMs
what is left of the group and SIGKILLs it ``term_grace`` seconds later; then it *checks*: every process that was in the group or below the child (recorded
just before closing) must be gone (a zombie counts as gone: it holds no memory), else it raises
``EngineNotReleased`` naming the pids; on CUDA, the device's free memory must be back to what it was
before the engine started (within ``cuda_tolerance_bytes``), else it logs a warning with the numbers
(another program on the same GPU can explain a difference, so this is not an error). ``release`` holds
what the check found (pids ended, free memory before/while/after), for diagnostics and ``scripts/gpu_check.py``.
The run loop closes its engine before training, so these checks run before DPO starts.

Requests and outputs are pickled; a call returns once the child has produced every output (the child's
engine yields them; they cross the pipe as one list). An exception in the child is re-raised here as a
``RuntimeError`` carrying the child's traceback; a child that dies mid-call is an ``EngineProcessDied``
naming its exit code.

Assumptions: Linux (process groups, ``/proc`` through psutil); ``factory`` and its arguments are picklable
(a module-level class or ``functools.partial`` of one); the engine's own processes do not leave the group
(vLLM's do not call ``setsid``) or are descendants of the child when ``close`` starts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest

log = logging.getLogger("metareward.engines.isolated")
CALLS = ("generate", "choice_probs", "render", "info")  # what the parent may ask the child's engine to do


class EngineNotReleased(RuntimeError):
    """Processes of a closed engine are still alive: their memory (host or GPU) is not free."""


class EngineProcessDied(RuntimeError):
    """The engine's child process exited while a call or start-up was in progress."""


def _watch_parent(parent_pid: int) -> None:
    """In the child: when the parent is gone (we were re-parented), end the whole group, ourselves included."""
    while True:
        if os.getppid() != parent_pid:
            os.killpg(0, signal.SIGKILL)
        time.sleep(1.0)


def _serve(conn: Connection, factory: Callable[[], Engine], parent_pid: int) -> None:
    """The child's main loop: build the engine, then answer ``(call, args)`` messages until ``close``."""
    os.setpgrp()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()
    try:
        engine = factory()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", os.getpid()))
    while True:
        try:
            call, args = conn.recv()
        except (EOFError, OSError):  # the parent died without closing us: end the whole group, us included
            os.killpg(0, signal.SIGKILL)
        if call == "close":
            try:
                engine.close()
                conn.send(("ok", None))
            except BaseException:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))
            break
        try:
            if call not in CALLS:
                raise ValueError(f"unknown engine call {call!r}")
            if call == "info":
                result: Any = getattr(engine, "info", dict)()
            else:
                result = getattr(engine, call)(*args)
            if call in ("generate", "choice_probs"):
                result = list(result)
            conn.send(("ok", result))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def alive_pids(pids: Sequence[int]) -> list[int]:
    """Those of ``pids`` that still run (zombies, which hold no memory, do not count)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def group_and_descendants(pid: int) -> list[int]:
    """``pid``, its descendants, and every other member of the process group ``pid`` leads."""
    import psutil

    found = {pid}
    with contextlib.suppress(psutil.NoSuchProcess):
        found.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    for p in psutil.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p) == pid:
                found.add(p)
    return sorted(found)


def cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device, or None without CUDA (initialises CUDA in this process)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[0])


class ChildProcessEngine(Engine):
    """``factory()`` run in a child process; see the module docstring."""

    def __init__(
        self,
        factory: Callable[[], Engine],
        name: str = "engine",
        start_timeout: float = 1800.0,
        close_grace: float = 60.0,
        term_grace: float = 5.0,
        check_cuda: bool = True,
        cuda_tolerance_bytes: int = 512 * 2**20,
    ):
        self.name = name
        self.close_grace = close_grace
        self.term_grace = term_grace
        self.cuda_tolerance_bytes = cuda_tolerance_bytes
        self.release: dict[str, Any] = {}
        self._cuda_before = cuda_free_bytes() if check_cuda else None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        # not a daemon: daemonic processes may not start children, and vLLM's engine core is one
        self.proc = ctx.Process(target=_serve, args=(child_conn, factory, os.getpid()), name=f"metareward-{name}")
        self.proc.start()
        child_conn.close()
        self.pid = self.proc.pid
        # at interpreter exit (or if this object is dropped unclosed) the group is killed, never left running
        self._finalizer = weakref.finalize(self, _kill_group, self.pid, signal.SIGKILL)
        try:
            self._wait(start_timeout, "start-up")
        except BaseException:
            self._terminate()
            raise
        self._cuda_running = cuda_free_bytes() if check_cuda else None

    def _wait(self, timeout: float | None, what: str) -> Any:
        """The child's answer to the last message; raises what the child raised, or if it died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._conn.poll(1.0):
            if not self.proc.is_alive():
                if self._conn.poll(0):  # it answered, then exited
                    break
                raise EngineProcessDied(
                    f"{self.name}: the engine process (pid {self.pid}) exited with code {self.proc.exitcode} "
                    f"during {what}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no answer from the engine process within {timeout:.0f}s ({what})")
        try:
            status, payload = self._conn.recv()
        except EOFError:
            self.proc.join(timeout=10.0)
            raise EngineProcessDied(f"{self.name}: the engine process (pid {self.pid}) exited with code "
                                    f"{self.proc.exitcode} during {what}") from None
        if status == "error":
            raise RuntimeError(f"{self.name} ({what}, in the engine process):\n{payload}")
        return payload

    def call(self, name: str, *args: Any) -> Any:
        """Run ``engine.<name>(*args)`` in the child and return its result (generators as lists)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name}: the engine is closed")
        self._conn.send((name, args))
        return self._wait(None, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        if requests:
            yield from self.call("generate", list(requests))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        if requests:
            yield from self.call("choice_probs", list(requests))

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The engine's prompt token ids for ``messages`` (engines that render prompts themselves)."""
        return self.call("render", list(messages))

    def _terminate(self) -> list[int]:
        """Signal the child's whole group (TERM, then KILL after a grace period); the pids it held."""
        pids = group_and_descendants(self.pid)  # the group outlives its leader: look even if the child exited
        if alive_pids(pids):
            _kill_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.term_grace
            while alive_pids(pids) and time.monotonic() < deadline:
                time.sleep(0.1)
        if alive_pids(pids):
            _kill_group(self.pid, signal.SIGKILL)
            for pid in alive_pids(pids):  # a descendant that left the group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.join(timeout=10.0)
        self._finalizer.detach()
        return pids

    def abort(self) -> None:
        """End the child's whole group at once (SIGTERM, SIGKILL ``term_grace`` seconds later), without asking
        it to close: after an interrupt the child may still be busy with the abandoned call. Safe twice."""
        if getattr(self, "proc", None) is None:
            return
        pids = self._terminate()
        self._conn.close()
        self.proc = None  # type: ignore[assignment]
        self.release = {"pids": pids, "left": alive_pids(pids), "aborted": True}

    def close(self) -> None:
        """Close the engine, end its processes, and check they are gone (see module docstring). Safe twice."""
        if getattr(self, "proc", None) is None:
            return
        pids = group_and_descendants(self.pid)
        if self.proc.is_alive():
            try:
                self._conn.send(("close", ()))
                self._wait(self.close_grace, "close")
            except (RuntimeError, TimeoutError, OSError) as e:
                log.warning("%s: closing in the engine process failed (%s); ending its processes", self.name, e)
            self.proc.join(timeout=self.close_grace)
        pids = sorted(set(pids) | set(self._terminate()))
        self._conn.close()
        self.proc = None  # type: ignore[assignment]
        for _ in range(50):  # processes killed a moment ago may take a little while to exit
            left = alive_pids(pids)
            if not left:
                break
            time.sleep(0.1)
        self.release = {"pids": pids, "left": left, "cuda_free_before": self._cuda_before,
                        "cuda_free_running": self._cuda_running, "cuda_free_after": None}
        if left:
            raise EngineNotReleased(
                f"{self.name}: processes of the closed engine are still alive: pids {left} (of {pids}); their "
                "memory is not free. End them (kill -9) before training.")
        after = cuda_free_bytes() if self._cuda_before is not None else None
        self.release["cuda_free_after"] = after
        if after is not None and after < self._cuda_before - self.cuda_tolerance_bytes:
            log.warning(
                "%s: after closing the engine (its processes %s are gone) the GPU has %.2f GiB free, %.2f GiB "
                "less than before it started; another program on this GPU may be using it", self.name, pids,
                after / 2**30, (self._cuda_before - after) / 2**30)


__all__ = ["ChildProcessEngine", "EngineNotReleased", "EngineProcessDied", "alive_pids", "group_and_descendants"]
