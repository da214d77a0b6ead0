"""Helpers for tests that talk to real local servers: free ports, waiting for readiness, a fault proxy,
and the judge requests of a tiny judge stage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from metareward.config import JudgeConfig
from metareward.records import Prompt, Response
from metareward.stages.judge import judge_requests

PROMPTS = [Prompt("q0", "What is 2 + 3?"), Prompt("q1", "Name a primary color.")]
RESPONSES = [
    Response("q0/r0", "q0", 0, "2 + 3 = 5."),
    Response("q0/r1", "q0", 1, "It is 6."),
    Response("q1/r0", "q1", 0, "Red is a primary color."),
]


def tiny_judge_requests(n: int = 2, max_tokens: int = 10, scoring: str = "free_text"):
    cfg = JudgeConfig(n=n, max_tokens=max_tokens, scoring=scoring)
    return judge_requests({p.id: p for p in PROMPTS}, RESPONSES, cfg, run_seed=0, iteration=1), cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll ``url`` until it answers 200 (or the process dies, or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """End a server and every process under it: its whole process group when it leads one (started with
    ``start_new_session=True``, as vLLM servers must be: its engine core outlives a killed main process),
    and in any case every descendant found now. SIGTERM, then SIGKILL after ``grace`` seconds."""
    import psutil

    try:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    group = proc.pid if _leads_group(proc.pid) else None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (_alive(family) or (group is not None and _group_alive(group))):
            time.sleep(0.2)
        if not _alive(family) and not (group is not None and _group_alive(group)):
            break
    proc.wait(timeout=30)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _alive(pids: list[int]) -> bool:
    import psutil

    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _group_alive(pgid: int) -> bool:
    import psutil

    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that answers every ``every``-th POST itself with
    429 (odd failures) or 500 (even failures) instead of forwarding it (``every=0``: never). Records the
    Authorization headers it saw, so a test can check the API key was sent. ``refuse_n``: a POST asking for
    ``n`` > 1 gets HTTP 400 (as some servers answer), without reaching ``upstream``."""

    def __init__(self, upstream: str, every: int, refuse_n: bool = False):
        self.upstream, self.every = upstream.rstrip("/").removesuffix("/v1"), every
        self.posts = 0
        self.failures = 0
        self.auth_headers: set[str] = set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, body: bytes | None) -> None:
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command)
                for k in ("Content-Type", "Authorization"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self._send(status, data)

            def _send(self, status: int, data: bytes, extra: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if refuse_n and int(json.loads(body).get("n") or 1) > 1:
                    return self._send(400, json.dumps({"error": {"message": "'n' must be 1 on this server"}}).encode())
                with proxy.lock:
                    proxy.posts += 1
                    fail = proxy.every > 0 and proxy.posts % proxy.every == 0
                    if fail:
                        proxy.failures += 1
                    nth = proxy.failures
                    if self.headers.get("Authorization"):
                        proxy.auth_headers.add(self.headers["Authorization"])
                if fail:
                    status = 429 if nth % 2 else 500
                    msg = json.dumps({"error": {"message": f"injected {status}"}}).encode()
                    return self._send(status, msg, {"Retry-After": "0"} if status == 429 else None)
                self._forward(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
