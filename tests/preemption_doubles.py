"""Test doubles for ``metareward run`` in a real subprocess (``tests/test_preemption.py``).

``SlowSpawningEngine`` is ``FakeEngine`` (same records) that, like vLLM, starts a worker process of its
own, one that ignores SIGTERM, and takes ``delay`` seconds per call, so a signal lands mid-stage.
``main(argv)`` is ``metareward <argv>`` with the configured engine replaced by that engine inside
``engines.isolated.ChildProcessEngine`` (the vLLM engine's child process) and DPO by writing the pair ids
(as ``tests/test_loop.py``'s ``FakeTrainRunner``); the engine's pids go to ``$PREEMPT_PID_FILE``.

Run as ``python -c "import preemption_doubles, sys; sys.exit(preemption_doubles.main(sys.argv[1:]))" run CFG``
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time

from fakes import FakeEngine


class SlowSpawningEngine(FakeEngine):
    def __init__(self, pid_file: str, delay: float):
        super().__init__()
        self.delay = delay
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        self.worker = subprocess.Popen([sys.executable, "-c", code])
        with open(pid_file, "a") as f:
            f.write(f"{os.getpid()} {self.worker.pid}\n")

    def generate(self, requests):
        time.sleep(self.delay)
        yield from super().generate(requests)

    def choice_probs(self, requests):
        time.sleep(self.delay)
        yield from super().choice_probs(requests)


def fake_train(self, model_path, train_set, store):
    store.layout.model.mkdir(parents=True, exist_ok=True)
    (store.layout.model / "pairs.json").write_text(json.dumps([p.id for p in train_set]))
    return {"pairs": len(train_set)}


def main(argv: list[str]) -> int:
    import metareward.engines
    from metareward import cli, loop
    from metareward.engines.isolated import ChildProcessEngine

    pid_file = os.environ["PREEMPT_PID_FILE"]
    delay = float(os.environ.get("PREEMPT_DELAY", "0.5"))

    def make_engine(cfg, model_path, log_dir=None):
        return ChildProcessEngine(functools.partial(SlowSpawningEngine, pid_file, delay), name="slow",
                                  term_grace=1.0, check_cuda=False)

    metareward.engines.make_engine = make_engine
    loop.Runner.train = fake_train
    return cli.main(argv)
