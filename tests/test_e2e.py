"""End to end on the real embedded model (slow, kept small): a ``metareward run`` killed with SIGKILL in
the middle of its judge stage, whose rerun finishes the iteration, DPO included, with the records of an
uninterrupted run and a trained model that loads and generates.

The uninterrupted run is the same config run in this process without its train stage: training reads
the records and never writes them, so the records it leaves are what an uninterrupted ``metareward
run`` leaves, and the one DPO of the test is the rerun's (through the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metareward.config import load_config
from metareward.layout import ARTIFACTS, RunLayout
from metareward.loop import STAGES, Runner

pytestmark = pytest.mark.slow


class RecordsOnlyRunner(Runner):
    """Every stage but ``train``: an uninterrupted run's records, without paying for its DPO."""

    stages = tuple(s for s in STAGES if s.name != "train")


def tiny_config(tmp_path: Path, run_dir: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"id": f"q{i}", "prompt": p}) for i, p in enumerate(
            ["Name a primary color.", "What is 2 + 3?", "Say hello in French.", "Name a planet."]))
        + "\n"
    )
    cfg = {
        "run_dir": str(run_dir),
        "model": "smollm2-135m",
        "prompts": str(prompts),
        "engine": {"device": "cpu", "threads": 2, "batch_size": 16, "chunk_size": 1},
        "actor": {"k": 3, "max_tokens": 12},
        "judge": {"n": 3, "max_tokens": 8, "scoring": "constrained"},
        "meta_judge": {"max_tokens": 4, "scoring": "constrained"},
        "training": {"batch_size": 2, "gradient_accumulation": 1, "max_length": 768, "epochs": 1},
        "iterations": [{"prompts": 1, "rho": 0.0, "train_judge": True}],
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metareward(*args: str) -> list[str]:
    return [sys.executable, "-m", "metareward.cli", *args]


def read_records(run_dir: Path) -> dict[str, str]:
    it = RunLayout(run_dir).iteration(1)
    return {name: it.artifact(name).read_text() for name in ARTIFACTS}


def test_one_iteration_then_kill_and_resume(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # 1. the uninterrupted run's records
    ref_dir = tmp_path / "ref"
    RecordsOnlyRunner(load_config(tiny_config(tmp_path, ref_dir)), echo=lambda s: None).run()
    reference = read_records(ref_dir)
    assert all(reference[name] for name in ARTIFACTS if name != "judge_pairs"), "a stage wrote no records"

    # 2. the same run, killed with SIGKILL once the judge stage has finished a chunk
    run_dir = tmp_path / "killed"
    it = RunLayout(run_dir).iteration(1)
    cfg = tiny_config(tmp_path, run_dir)
    proc = subprocess.Popen(metareward("run", str(cfg)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        logs = list(it.work.glob("judge-*.chunks.jsonl")) if it.work.is_dir() else []
        if logs and logs[0].read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_in = "judge"
            break
        time.sleep(0.2)
    proc.wait()
    assert killed_in == "judge", "the run finished before it could be killed mid-stage"
    assert not it.artifact("judgments").exists()
    manifest = json.loads(it.manifest.read_text())
    assert manifest["stages"]["actor"]["done"] and "judge" not in manifest["stages"]

    # 3. rerun: it resumes, finishes the iteration with DPO, and ends with the uninterrupted records
    again = subprocess.run(metareward("run", str(cfg)), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "iteration 1 summary" in again.stdout
    # the actor stage was not redone: its progress bar never ran again
    assert "[iter 1] actor" not in again.stderr
    assert read_records(run_dir) == reference
    manifest = json.loads(it.manifest.read_text())
    assert manifest["stages"]["train"]["trained"] is True
    assert manifest["summary"]["responses"] > 0 and manifest["summary"]["parse_rate"] == 1.0
    pairs = [json.loads(x) for name in ("actor_pairs", "judge_pairs") for x in it.artifact(name).read_text().splitlines()]
    assert pairs, "the iteration produced no preference pairs to train on"
    assert manifest["stages"]["train"]["count"] == len(pairs)

    # the trained model loads and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(it.model)
    model = AutoModelForCausalLM.from_pretrained(it.model)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
