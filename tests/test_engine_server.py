"""``engines.server.ManagedServer``: start-up failures are clear and leave no process or port behind.

The successful path (a real server per model, two models in turn, generation through each) is tested
in ``test_engine_openai.py::test_managed_server_per_model`` with the embedded model."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time

import pytest
from servers import free_port

from metareward.config import EngineConfig
from metareward.engines import make_engine
from metareward.engines.server import EngineStartError, ManagedServer

PY = shlex.quote(sys.executable)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_command_template_is_filled_and_quoted(tmp_path):
    s = ManagedServer("serve {model} --host {host} --port {port}", "/models/my model", "http://127.0.0.1:8123/v1",
                      tmp_path / "server.log")
    assert s.argv == ["serve", "/models/my model", "--host", "127.0.0.1", "--port", "8123"]
    assert s.ready_url == "http://127.0.0.1:8123/v1/models"
    with pytest.raises(ValueError, match=r"placeholders: \{model\}, \{host\}, \{port\}"):
        ManagedServer("serve {modle}", "m", "http://127.0.0.1:8123/v1", tmp_path / "server.log")


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    port = free_port()
    cmd = f"{PY} -c \"import sys; print('cuda out of memory', flush=True); sys.exit(3)\""
    s = ManagedServer(cmd, "m", f"http://127.0.0.1:{port}/v1", tmp_path / "server.log", start_timeout=60)
    with pytest.raises(EngineStartError, match=r"(?s)exited with code 3.*cuda out of memory"):
        s.start()
    assert "starting:" in (tmp_path / "server.log").read_text()


def test_a_server_that_never_answers_is_stopped(tmp_path):
    port = free_port()
    s = ManagedServer(f"{PY} -c \"import time; time.sleep(120)\"", "m", f"http://127.0.0.1:{port}/v1",
                      tmp_path / "server.log", start_timeout=1.5)
    with pytest.raises(EngineStartError, match="did not answer .* within 2s"):
        s.start()
    assert s.proc is None


def test_the_process_group_is_ended_on_stop(tmp_path, monkeypatch):
    """A server that spawns workers (vLLM does) leaves none behind: the whole group gets the signal."""
    port = free_port()
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time, http.server\n"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text("{}")
    (tmp_path / "srv.py").write_text(script)
    s = ManagedServer(f"{PY} srv.py", "m", f"http://127.0.0.1:{port}/v1", tmp_path / "server.log", start_timeout=60)
    monkeypatch.chdir(tmp_path)  # the server serves its working directory: v1/models answers 200
    s.start()
    main, child = s.proc.pid, int(pidfile.read_text())
    assert alive(main) and alive(child)
    s.stop()
    assert not alive(main)
    for _ in range(50):  # the child is not ours to reap: wait for init to
        if not alive(child):
            break
        time.sleep(0.1)
    assert not alive(child)
    with socket.socket() as sock:  # the port is free again for the next model's server
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_busy_port_is_refused_before_starting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = EngineConfig(name="openai", base_url=f"http://127.0.0.1:{port}/v1", server_command="never-run {model}")
        with pytest.raises(EngineStartError, match="already in use"):
            make_engine(cfg, "m", log_dir=tmp_path)
    assert not (tmp_path / "server.log").exists()  # nothing was started


def test_the_leftover_process_check_finds_an_orphan_and_ends_it():
    """conftest's autouse check: a process this session started is found even after it lost its parent (as
    vLLM's engine core did when only the server's main process was killed), fails the test, and is killed."""
    import subprocess

    import conftest

    before = conftest.session_processes()
    spawn = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    orphan = int(subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True, check=True,
                                timeout=60).stdout)
    assert alive(orphan) and orphan not in [c.pid for c in __import__("psutil").Process().children(recursive=True)]
    with pytest.raises(pytest.fail.Exception, match=rf"this test left 1 process\(es\) running \(now killed\):\n  pid {orphan}: "):
        conftest._check("this test", before, grace=0.5)
    for _ in range(50):
        if not alive(orphan):
            break
        time.sleep(0.1)
    assert not alive(orphan)
    conftest._check("this test", before, grace=0)  # nothing left now
