"""Training as its own program, so it can run under ``accelerate launch`` on many GPUs or nodes.

Usage (every process of the launch runs the same command; accelerate sets the ranks)::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m metareward.training.launch dpo RUN_DIR ITER
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m metareward.training.launch sft RUN_DIR

``dpo RUN_DIR ITER`` trains iteration ``ITER`` of a run exactly as the in-process loop would: the resolved
``RUN_DIR/config.yaml``, the iteration's starting model (``model_in`` in its manifest, or ``--model``), its
``actor_pairs.jsonl`` + ``judge_pairs.jsonl`` in that order, checkpoints in ``iter_ITER/.work/dpo`` (a killed
launch resumes from the last one), the result in ``iter_ITER/model``. ``sft RUN_DIR`` runs the optional SFT
step 0 (``metareward.training.sft.run_sft``) into ``iter_0/model``.

The main process writes the metrics to ``METRICS_FILE`` (``iter_<i>/.work/train_metrics.json``) atomically;
``launch_training`` (what the run loop calls when ``training.launcher`` is set) starts the launcher as a
subprocess and reads them back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from metareward.files import atomic_write_json
from metareward.layout import PAIR_ARTIFACTS, RunLayout

METRICS_FILE = "train_metrics.json"


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def metrics_path(run_dir: str | Path, iteration: int) -> Path:
    return RunLayout(run_dir).iteration(iteration).work / METRICS_FILE


def run_dpo(run_dir: str | Path, iteration: int, model: str | None = None) -> dict[str, Any]:
    from metareward.config import load_config
    from metareward.records import PreferencePair, read_jsonl
    from metareward.store import IterationStore
    from metareward.training.dpo import train_dpo

    run = RunLayout(run_dir)
    cfg = load_config(run.config)
    store = IterationStore(run.iteration(iteration))
    model_path = model or store.manifest.get("model_in")
    if not model_path:
        raise SystemExit(f"{store.layout.manifest}: no model_in; pass --model")
    pairs = [p for name in PAIR_ARTIFACTS for p in read_jsonl(store.layout.artifact(name), PreferencePair)]
    metrics = train_dpo(model_path, pairs, store.layout.model, cfg.training, store.layout.train_work("dpo"),
                        threads=cfg.engine.threads)
    metrics["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    if _is_main():
        atomic_write_json(metrics_path(run_dir, iteration), metrics)
    return metrics


def run_sft_step(run_dir: str | Path, model: str | None = None) -> dict[str, Any]:
    from metareward.config import load_config
    from metareward.models import resolve_model
    from metareward.store import IterationStore
    from metareward.training.sft import run_sft

    run = RunLayout(run_dir)
    cfg = load_config(run.config)
    sft = getattr(cfg, "sft", None)
    if sft is None:
        raise SystemExit(f"{run.config} has no sft section")
    store = IterationStore(run.iteration(0))
    metrics = run_sft(model or resolve_model(cfg.model), sft.data, str(store.layout.model), sft,
                      work_dir=str(store.layout.train_work("sft")), threads=cfg.engine.threads)
    metrics["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    if _is_main():
        atomic_write_json(metrics_path(run_dir, 0), metrics)
    return metrics


def resolve_launcher(launcher: str) -> list[str]:
    """Split ``launcher`` into argv, with its program resolved to the one installed beside this Python.

    ``accelerate`` (or ``torchrun``, or ``python``) must be the one of the environment metareward runs in,
    also when that environment's ``bin`` is not on ``PATH`` (``.venv/bin/metareward`` run without
    activating the venv): a sibling of ``sys.executable`` wins, then ``PATH``; neither is a clear error.
    """
    argv = shlex.split(launcher)
    if not argv:
        raise ValueError("training.launcher is empty")
    program = argv[0]
    if os.sep not in program:
        sibling = Path(sys.executable).parent / program
        if program in ("python", "python3"):
            argv[0] = sys.executable
        elif sibling.is_file() and os.access(sibling, os.X_OK):
            argv[0] = str(sibling)
        elif shutil.which(program) is None:
            raise FileNotFoundError(
                f"training.launcher: program {program!r} is neither beside {sys.executable} nor on PATH "
                f"(install it in this environment, e.g. pip install accelerate)")
    return argv


def launch_training(launcher: str, task: str, run_dir: str | Path, iteration: int | None = None,
                    model: str | None = None) -> dict[str, Any]:
    """Run ``LAUNCHER -m metareward.training.launch TASK ...`` as a subprocess (the caller's GPU memory
    must be free: the loop closes its engine first) and return the metrics the main process wrote."""
    args = [task, str(run_dir)] + ([str(iteration)] if iteration is not None else [])
    if model:
        args += ["--model", model]
    cmd = resolve_launcher(launcher) + ["-m", "metareward.training.launch", *args]
    out = metrics_path(run_dir, iteration or 0)
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: ended as a whole on an interrupt
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C or SIGTERM (cli): end the launcher and every worker it started
        end_launch(proc)
        raise
    if code != 0:
        raise RuntimeError(f"training launcher failed with exit code {code}: {shlex.join(cmd)}")
    if not out.is_file():
        raise RuntimeError(f"training launcher exited 0 but wrote no metrics ({out}): {shlex.join(cmd)}")
    return json.loads(out.read_text())


def end_launch(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End a training launch: SIGTERM to its process group (torchrun's and accelerate's agents end their
    workers on it), SIGKILL after ``grace`` seconds to the group and to every descendant still running
    (workers an agent started in sessions of their own). The launch's checkpoints stay for the rerun."""
    import signal
    import time

    from metareward.engines.isolated import alive_pids, group_and_descendants

    pids = group_and_descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive_pids(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive_pids(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10.0  # SIGKILLed a moment ago: give the kernel a moment to end them
    while alive_pids(pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metareward.training.launch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("dpo", help="DPO of one iteration of a run")
    p.add_argument("run_dir")
    p.add_argument("iteration", type=int)
    p.add_argument("--model", help="starting model (default: the iteration's model_in)")
    p = sub.add_parser("sft", help="the SFT step 0 of a run")
    p.add_argument("run_dir")
    p.add_argument("--model", help="starting model (default: the run's model)")
    args = parser.parse_args(argv)
    if args.task == "dpo":
        run_dpo(args.run_dir, args.iteration, args.model)
    else:
        run_sft_step(args.run_dir, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
