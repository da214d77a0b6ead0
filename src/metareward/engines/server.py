"""A model server that metareward starts and stops itself, for the ``openai`` engine (``engine.server_command``).

An OpenAI-compatible server serves fixed weights, while the loop trains new weights every iteration. With
``server_command`` set, the engine runs the command for each model the loop uses (the seed model, then
``iter_<i>/model``), waits until the server answers, and stops it when the engine closes: the loop closes
its engine before training, so the server's accelerator memory is free for DPO, and a multi-iteration
run needs no one to restart a server by hand.

The command is a template: ``{model}`` becomes the model's path (shell-quoted), ``{host}`` and ``{port}``
come from ``engine.base_url``. For example ``vllm serve {model} --host {host} --port {port}`` (on a CPU
add ``--no-enable-chunked-prefill``, see the README). It runs in its own process group, without a shell
(split like a shell would), with stdout and stderr appended to a log file.

Readiness: ``GET <base_url>/models`` answers 200. Start-up fails with an ``EngineStartError`` that quotes
the log's last lines when the process exits first or ``start_timeout`` seconds pass (the process group
is then killed). ``stop`` sends SIGTERM to the group, waits up to ``stop_grace`` seconds for every process
of the group (not only the main one) to exit, then SIGKILLs the group.

Assumptions: the server takes the model path as the name it serves (``vllm serve PATH`` does; else set
``engine.served_model``); nothing else listens on ``base_url``'s port (checked before starting).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit


class EngineStartError(RuntimeError):
    """The managed server did not come up."""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedServer:
    """One server process for one model. ``start()`` returns once it answers; ``stop()`` ends it."""

    def __init__(
        self,
        command: str,
        model_path: str,
        base_url: str,
        log_path: str | Path,
        start_timeout: float = 900.0,
        stop_grace: float = 30.0,
    ):
        parts = urlsplit(base_url)
        if parts.hostname is None:
            raise ValueError(f"engine.base_url {base_url!r} has no host")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ready_url = base_url.rstrip("/") + "/models"
        try:
            self.argv = shlex.split(command.format(model=shlex.quote(model_path), host=self.host, port=self.port))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"engine.server_command {command!r}: {e!r} (placeholders: {{model}}, {{host}}, {{port}})"
            ) from None
        if not self.argv:
            raise ValueError("engine.server_command is empty")
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen | None = None

    def _port_in_use(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex((self.host, self.port)) == 0

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def start(self) -> None:
        if self._port_in_use():
            raise EngineStartError(
                f"engine.server_command: {self.host}:{self.port} is already in use; stop what listens there or "
                "point engine.base_url at a free port"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(self.argv)}\n")
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except OSError as e:
                raise EngineStartError(f"engine.server_command: cannot run {self.argv[0]!r}: {e}") from None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise EngineStartError(
                    f"the model server exited with code {code} before answering {self.ready_url}; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self._answers():
                return
            time.sleep(0.5)
        self.stop()
        raise EngineStartError(
            f"the model server did not answer {self.ready_url} within {self.start_timeout:.0f}s "
            f"(engine.server_start_timeout); it was stopped. Last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """SIGTERM the server's process group, wait up to ``stop_grace`` seconds for *every* member to exit
        (vLLM's engine core exits after its parent), then SIGKILL whatever of the group is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # started with start_new_session: the server leads its group
        if not _group_alive(pgid) and proc.poll() is not None:
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
        if proc.poll() is None or _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies, exited but not yet reaped, do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state, ppid, pgrp
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


__all__ = ["EngineStartError", "ManagedServer"]
