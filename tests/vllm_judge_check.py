"""Run inside the vLLM environment (``.venv-vllm``, see scripts/setup_vllm_cpu.sh) by test_engine_vllm.py:
a constrained-mode judge stage through ``VLLMEngine`` (in its child process, as the loop builds it) on the
embedded model, with the chunked store the
loop uses, and the same score requests through ``HFEngine`` for comparison. Writes a JSON report to
the path given as the first argument. Guarded by ``__main__``: vLLM spawns worker processes.

The engine gets a small step budget (``STEP_TOKENS`` = ``max_num_batched_tokens`` = ``max_model_len``,
vLLM's settings; the loop leaves vLLM's defaults), so that a stage whose prompts exceed one step takes a
few judge prompts rather than dozens: the path under test, prompts scheduled across steps, is the same."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

STEP_TOKENS = 1024  # tokens one engine step schedules: one judge prompt (~500 tokens) and part of a second


def main(out_path: str, model: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from servers import RESPONSES, tiny_judge_requests

    from metareward.config import EngineConfig
    from metareward.engines.base import GenerationOutput
    from metareward.engines.hf import HFEngine
    from metareward.engines.vllm import isolated_vllm_engine
    from metareward.records import Prompt
    from metareward.stages import judge
    from metareward.stages.chunks import run_chunked

    work = Path(out_path).parent
    reqs, cfg = tiny_judge_requests(n=3, max_tokens=12, scoring="constrained")
    t0 = time.perf_counter()
    engine = isolated_vllm_engine(EngineConfig(name="vllm", dtype="float32", threads=2), model,
                                  max_model_len=STEP_TOKENS, max_num_batched_tokens=STEP_TOKENS)
    startup = time.perf_counter() - t0
    enc = dataclasses.asdict
    t0 = time.perf_counter()
    outs = run_chunked(work / "judge.chunks.jsonl", reqs, engine.generate, GenerationOutput.to_columns, 2,
                       "vllm judge")
    prompts = {"q0": Prompt("q0", "What is 2 + 3?"), "q1": Prompt("q1", "Name a primary color.")}
    judgments = [j for r in RESPONSES
                 for j in judge.judgments_from_output(r, GenerationOutput.from_columns(outs[r.id]), cfg)]
    score_reqs = judge.score_requests(prompts, {r.id: r for r in RESPONSES}, judgments, cfg)
    scores = run_chunked(work / "score.chunks.jsonl", score_reqs, engine.choice_probs, enc, 4, "vllm score")
    stage_s = time.perf_counter() - t0
    again = {o.id: o.texts for o in engine.generate(reqs[:1])}
    # More seeded prompt tokens than one engine step takes (6 judge prompts of ~500 tokens, STEP_TOKENS a
    # step): vLLM 0.32 on CPU died here when it split a prefill across steps (see VLLMEngine).
    from metareward.engines.base import GenerationRequest, SamplingParams
    from metareward.templates import judge_prompt

    many = [
        GenerationRequest(id=f"many{i}", messages=({"role": "user", "content": judge_prompt(
            f"Question {i}: " + " ".join(["Explain the water cycle in detail."] * 12), r.text)},),
            sampling=SamplingParams(0.8, 0.95, 2), n=2, seed=i)
        for i, r in enumerate(RESPONSES * 2)
    ]
    many_out = list(engine.generate(many))
    many_prompt_tokens = sum(len(engine.render(r.messages)) for r in many)
    import psutil

    me = psutil.Process()

    def vllm_children() -> list[str]:
        """vLLM's live child processes (a zombie holds no memory and is not counted)."""
        out = []
        for c in me.children(recursive=True):
            try:
                if "VLLM" in c.name() and c.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{c.name()} ({c.status()})")
            except psutil.NoSuchProcess:
                pass
        return out

    children_before = vllm_children()
    engine.close()
    engine.close()  # twice is safe
    for _ in range(30):  # the engine core exits asynchronously after shutdown
        children_after = vllm_children()
        if not children_after:
            break
        time.sleep(0.5)
    hf = HFEngine(model, device="cpu", dtype="float32", threads=2)
    hf_scores = {o.id: o.probs for o in hf.choice_probs(score_reqs)}
    judged = [judge.apply_score(j, scores[j.id]["probs"], None) for j in judgments]
    report = {
        "startup_s": startup,
        "stage_s": stage_s,
        "outputs": outs,
        "vllm_processes_before_close": children_before,
        "vllm_processes_after_close": children_after,
        "engine_process": engine.pid,
        "release": engine.release,
        "repeat_same": again[reqs[0].id] == outs[reqs[0].id]["texts"],
        "many_prompts": {"requests": len(many), "outputs": len(many_out), "prompt_tokens": many_prompt_tokens,
                         "step_tokens": STEP_TOKENS,
                         "texts_per_output": sorted({len(o.texts) for o in many_out})},
        "scores": {k: v["probs"] for k, v in scores.items()},
        "hf_scores": hf_scores,
        "judgments": [dataclasses.asdict(j) for j in judged],
    }
    Path(out_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
