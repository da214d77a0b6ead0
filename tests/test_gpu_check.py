"""``scripts/gpu_check.py`` keeps working where CI runs (no GPU): its ``hf_engine`` section runs the same
comparisons with bf16 on the CPU (the C++ kernels) against float32 and reports them; a GPU run writes
the same keys (``benchmarks/results/gpu-2026-11-30.json``, from an H200)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_hf_engine_section_runs_and_reports_without_a_gpu(tmp_path):
    """The smallest run the script's options allow: one prompt (its four responses, of 32 tokens without a
    GPU, two judged three times each); ``--vllm-python ''``: only this interpreter is probed for vLLM (no
    vLLM section runs here)."""
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--only", "hf_engine",
                           "--prompts", "1", "--threads", "2", "--vllm-python", "", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NO GPU" in done.stdout
    report = json.loads(out.read_text())
    assert report["gpu"] is None
    section = report["checks"]["hf_engine"]
    assert section["status"] == "ok", section
    bf16 = section["bfloat16"]
    assert bf16["judgments"] == bf16["follow_ups_answered"] > 0
    assert bf16["follow_up_vs_choice_probs_max_abs"] <= 0.1
    assert bf16["vs_cpu_float32_max_abs"] <= 0.1
    assert section["actor_throughput_bf16"]["batch_32"]["tokens"] > 0

