"""End to end on the real embedded model (slow, kept small): one whole iteration with DPO, and a run
killed with SIGKILL in the middle of a generation stage whose rerun ends with the same records."""

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

pytestmark = pytest.mark.slow

ARTIFACTS = ["prompts.jsonl", "responses.jsonl", "judgments.jsonl", "meta_judgments.jsonl",
             "actor_pairs.jsonl", "judge_pairs.jsonl"]


def tiny_config(tmp_path: Path, run_dir: Path, iterations: int = 1) -> Path:
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
        "actor": {"k": 3, "max_tokens": 16},
        "judge": {"n": 3, "max_tokens": 12, "scoring": "constrained"},
        "meta_judge": {"max_tokens": 8, "scoring": "constrained"},
        "training": {"batch_size": 2, "gradient_accumulation": 1, "max_length": 768, "epochs": 1},
        "iterations": [{"prompts": 2, "rho": 0.0, "train_judge": True}] * iterations,
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metareward(*args: str) -> list[str]:
    return [sys.executable, "-m", "metareward.cli", *args]


def read_records(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / "iter_1" / name).read_text() for name in ARTIFACTS}


def test_one_iteration_then_kill_and_resume(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # 1. an uninterrupted iteration, DPO included
    ref_dir = tmp_path / "ref"
    done = subprocess.run(metareward("run", str(tiny_config(tmp_path, ref_dir))), env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "iteration 1 summary" in done.stdout
    manifest = json.loads((ref_dir / "iter_1" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["trained"] is True
    assert manifest["summary"]["responses"] > 0 and manifest["summary"]["parse_rate"] == 1.0
    pairs = [json.loads(x) for x in (ref_dir / "iter_1" / "actor_pairs.jsonl").read_text().splitlines()]
    pairs += [json.loads(x) for x in (ref_dir / "iter_1" / "judge_pairs.jsonl").read_text().splitlines()]
    assert pairs, "the iteration produced no preference pairs to train on"

    # the trained model loads and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = ref_dir / "iter_1" / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    # 2. the same run, killed with SIGKILL once the judge stage has finished a chunk, then rerun
    run_dir = tmp_path / "killed"
    cfg = tiny_config(tmp_path, run_dir)
    proc = subprocess.Popen(metareward("run", str(cfg)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        logs = list((run_dir / "iter_1" / ".work").glob("judge-*.chunks.jsonl"))
        if logs and logs[0].read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_in = "judge"
            break
        time.sleep(0.2)
    proc.wait()
    assert killed_in == "judge", "the run finished before it could be killed mid-stage"
    assert not (run_dir / "iter_1" / "judgments.jsonl").exists()
    manifest = json.loads((run_dir / "iter_1" / "manifest.json").read_text())
    assert manifest["stages"]["actor"]["done"] and "judge" not in manifest["stages"]
    again = subprocess.run(metareward("run", str(cfg)), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    # the actor stage was not redone: its progress bar never ran again
    assert "[iter 1] actor" not in again.stderr
    assert read_records(run_dir) == read_records(ref_dir)
