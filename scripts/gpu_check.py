"""The GPU path in one command (``make gpu-check``): at most ~8 minutes on one GPU, nothing downloaded (the
embedded SmolLM2-135M-Instruct), results in ``benchmarks/results/gpu-<date>.json``.

Checks, each reported as ``ok`` / ``failed`` (with the error) / ``skipped`` (with the reason):

* ``ceiling``: the device's measured matmul ceiling (bf16 on a GPU; on a CPU float32 and bf16, small);
* ``hf_engine`` (no vLLM needed): the ``hf`` engine on the GPU in float32 and bf16 against float32 on the
  CPU (greedy actor texts agree on at least ``GREEDY_AGREEMENT`` of the prompts in float32; constrained
  score probabilities within ``PROB_TOLERANCE`` / ``PROB_TOLERANCE_BF16``); the score reads answered
  from each judgment's own cache during generation (follow-ups) against ``choice_probs``' independent
  forward on the same device; bf16 actor tokens/s at batch sizes 64 and 256 with peak GPU memory;
* ``loop_hf``: a one-iteration run (``configs/tiny-cpu.yaml``, first iteration) with the ``hf`` engine on
  the GPU (dtype auto: bf16): actor, judge, meta-judge, pairs, DPO, the trained model folder;
* ``engines`` (vLLM): the vLLM engine (in its child process, as the loop builds it) and the ``hf`` engine on
  the same GPU, both float32 (bf16 with ``PROB_TOLERANCE_BF16`` if this vLLM cannot start in float32 there),
  on an actor stage and a judge stage in both scoring modes:
  ``constrained``: the score probabilities of the same judgments agree within ``PROB_TOLERANCE`` (max
  absolute difference over the six digits); ``free_text``: greedy judgments agree token for token on at
  least ``GREEDY_AGREEMENT`` of the requests (a near-tie in float32 reductions can flip one token, after
  which texts diverge) and vLLM's sampled judgments parse as often as the hf engine's (reported);
  the GPU's free memory before the engine starts, while it runs, and after closing it (must be back
  within ``MEMORY_TOLERANCE_GIB``), and that none of the engine's processes is left;
* ``dpo_native`` and ``dpo_trl``: DPO steps of the embedded model in bf16 on CUDA (float32 on a CPU), their
  tokens/s and achieved FLOP/s against ``ceiling`` (useful FLOPs: policy forward + backward = 3 forwards,
  plus one reference forward, ``2 x params`` per token and forward);
* ``loop_vllm``: a one-iteration run (``configs/tiny-cpu.yaml``'s stages, 8 prompts) with ``engine.name:
  vllm`` end to end: actor, judge, meta-judge, pairs, DPO, the trained model folder;
* ``accelerate_one_process``: one iteration's DPO through ``training.launcher: accelerate launch
  --num_processes 1`` (the loop's multi-GPU path with one process).

Without a GPU it says so first, runs what a CPU can quickly (``ceiling``, ``hf_engine`` with bf16 on the
CPU against float32, the two DPO steps in float32, ``accelerate_one_process`` with ``--cpu``) and skips
the rest; the exit code is 0 unless a check that ran
failed. vLLM's checks run in the interpreter that has vLLM: this one if ``import vllm`` works, else
``--vllm-python`` (default ``.venv-vllm/bin/python``); ``--vllm-on-cpu`` runs them with vLLM's CPU build
(development: checks the script itself, slow). Each section runs in its own process so that one's GPU
memory never counts against the next.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROB_TOLERANCE = 0.02
PROB_TOLERANCE_BF16 = 0.1  # only if vLLM cannot run float32 on the GPU: bf16 logits are ~3 significant digits
GREEDY_AGREEMENT = 0.75
MEMORY_TOLERANCE_GIB = 0.5
SECTIONS = ("ceiling", "hf_engine", "dpo_native", "dpo_trl", "loop_hf", "engines", "loop_vllm",
            "accelerate_one_process")
VLLM_SECTIONS = ("engines", "loop_vllm")
QA = [
    ("What is 2 + 3? Explain your reasoning step by step.", "2 + 3 = 5, because adding 3 to 2 gives 5.",
     "It is 7, since 2 and 3 make 7."),
    ("Name a primary color and describe where it appears in nature.", "Red: in ripe strawberries and sunsets.",
     "Purple is a primary color found in the sea."),
    ("Say hello in French and give one more greeting.", "Bonjour! You can also say salut.", "Hola! And ciao."),
    ("Name a planet of the solar system and one fact about it.", "Mars: it has two small moons.",
     "The Moon is a planet with rings."),
]


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_path() -> str:
    from metareward.models import resolve_model

    return resolve_model("smollm2-135m")


# --------------------------------------------------------------------------- sections (each in its own process)


def matmul_tflops(dtype_name: str, n: int, reps: int, device: str) -> float:
    """Best TFLOP/s of ``reps`` timed n x n matmuls (after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    best = math.inf
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def section_ceiling(args) -> dict[str, Any]:
    if cuda():
        return {"device": "cuda", "bfloat16_tflops": round(matmul_tflops("bfloat16", 8192, 20, "cuda"), 1)}
    return {"device": "cpu", "float32_tflops": round(matmul_tflops("float32", 1024, 5, "cpu"), 3),
            "bfloat16_tflops": round(matmul_tflops("bfloat16", 1024, 5, "cpu"), 3)}


def _prompts(n: int):
    from metareward.pool import load_prompt_pool

    return load_prompt_pool("builtin:seed_prompts")[:n]


def _greedy(reqs):
    import dataclasses

    from metareward.engines.base import SamplingParams

    return [dataclasses.replace(r, n=1, sampling=SamplingParams(0.0, 1.0, r.sampling.max_tokens)) for r in reqs]


def section_engines(args) -> dict[str, Any]:
    """vLLM (child process) vs hf on the same device: actor stage, judge stage in both scoring modes, memory."""
    import dataclasses

    from metareward.config import ActorConfig, EngineConfig, JudgeConfig
    from metareward.engines import make_engine
    from metareward.engines.hf import HFEngine
    from metareward.engines.isolated import cuda_free_bytes
    from metareward.stages import actor, judge

    device = "cuda" if cuda() else "cpu"
    model = model_path()
    prompts = _prompts(args.prompts)
    by_id = {p.id: p for p in prompts}
    actor_cfg = ActorConfig(k=4, max_tokens=128)
    free_cfg = JudgeConfig(n=3, max_tokens=96, scoring="free_text")
    con_cfg = JudgeConfig(n=3, max_tokens=48, scoring="constrained")
    actor_reqs = actor.actor_requests(prompts, actor_cfg, run_seed=0, iteration=1)
    out: dict[str, Any] = {"device": device, "prompts": len(prompts)}

    gib = 2**30
    free_start = cuda_free_bytes()
    t0 = time.perf_counter()
    dtype, tolerance = "float32", PROB_TOLERANCE
    cfg = EngineConfig(name="vllm", device=device, dtype=dtype, gpu_memory_utilization=0.5, threads=args.threads)
    try:
        vllm = make_engine(cfg, model)
    except RuntimeError as e:  # a vLLM build without a float32 attention backend on this GPU: compare in bf16
        out["float32_start_error"] = str(e)[-500:]
        dtype, tolerance = "bfloat16", PROB_TOLERANCE_BF16
        vllm = make_engine(dataclasses.replace(cfg, dtype=dtype), model)
    out["dtype"] = dtype
    out["vllm_startup_s"] = round(time.perf_counter() - t0, 1)
    out["vllm"] = vllm.call("info")
    out["memory_gib"] = {"free_before_start": free_start and round(free_start / gib, 2)}
    try:
        def timed(fn, reqs):
            t = time.perf_counter()
            res = {o.id: o for o in fn(reqs)}
            return res, time.perf_counter() - t

        actor_out, secs = timed(vllm.generate, actor_reqs)
        tokens = sum(o.generated_tokens for o in actor_out.values())
        samples = sum(len(o.samples) for o in actor_out.values())
        out["actor"] = {"requests": len(actor_reqs), "samples": samples,
                        "tokens": tokens, "seconds": round(secs, 2), "vllm_tokens_per_s": round(tokens / secs, 1)}
        assert all(len(o.samples) == actor_cfg.k for o in actor_out.values()), "actor: not k samples a prompt"
        responses = [r for p in prompts for r in actor.responses_from_output(p, actor_out[p.id])][: 2 * len(prompts)]
        resp_by_id = {r.id: r for r in responses}
        free_reqs = judge.judge_requests(by_id, responses, free_cfg, run_seed=0, iteration=1)
        con_reqs = judge.judge_requests(by_id, responses, con_cfg, run_seed=0, iteration=1)
        greedy_actor, greedy_judge = _greedy(actor_reqs), _greedy(free_reqs)

        v_free, secs = timed(vllm.generate, free_reqs)
        v_greedy_actor, _ = timed(vllm.generate, greedy_actor)
        v_greedy_judge, _ = timed(vllm.generate, greedy_judge)
        v_con, _ = timed(vllm.generate, con_reqs)
        judgments = [j for r in responses for j in judge.judgments_from_output(r, v_con[r.id], con_cfg)]
        score_reqs = judge.score_requests(by_id, resp_by_id, judgments, con_cfg)
        v_scores, score_secs = timed(vllm.choice_probs, score_reqs)
        out["judge_free_text_seconds"] = round(secs, 2)
        out["judge_score_seconds"] = round(score_secs, 2)
    finally:
        vllm.close()
    rel = vllm.release
    out["engine_processes_ended"] = rel["pids"]
    out["engine_processes_left"] = rel["left"]
    if rel.get("cuda_free_before") is not None:
        out["memory_gib"].update({k: round(rel[f"cuda_free_{k}"] / gib, 2) for k in ("before", "running", "after")})
        out["memory_gib"]["held_while_running"] = round((rel["cuda_free_before"] - rel["cuda_free_running"]) / gib, 2)
        out["memory_gib"]["not_returned"] = round((rel["cuda_free_before"] - rel["cuda_free_after"]) / gib, 2)

    hf = HFEngine(model, device=device, dtype=dtype, batch_size=64, threads=args.threads)
    try:
        t = time.perf_counter()
        h_actor = {o.id: o for o in hf.generate(actor_reqs)}
        secs = time.perf_counter() - t
        out["actor"]["hf_tokens_per_s"] = round(sum(o.generated_tokens for o in h_actor.values()) / secs, 1)
        h_greedy_actor = {o.id: o for o in hf.generate(greedy_actor)}
        h_greedy_judge = {o.id: o for o in hf.generate(greedy_judge)}
        h_free = {o.id: o for o in hf.generate(free_reqs)}
        h_scores = {o.id: o for o in hf.choice_probs(score_reqs)}
    finally:
        hf.close()

    def agreement(a, b) -> float:
        return sum(a[k].texts == b[k].texts for k in a) / len(a)

    def parse_rate(outs) -> float:
        js = [j for r in responses for j in judge.judgments_from_output(r, outs[r.id], free_cfg)]
        return sum(j.score is not None for j in js) / len(js)

    diffs = [max(abs(x - y) for x, y in zip(v_scores[k].probs, h_scores[k].probs, strict=True)) for k in v_scores]
    out["actor"]["greedy_agreement"] = round(agreement(v_greedy_actor, h_greedy_actor), 3)
    out["judge_free_text"] = {"greedy_agreement": round(agreement(v_greedy_judge, h_greedy_judge), 3),
                              "vllm_parse_rate": round(parse_rate(v_free), 3),
                              "hf_parse_rate": round(parse_rate(h_free), 3), "requests": len(free_reqs)}
    out["judge_constrained"] = {"judgments": len(score_reqs), "max_abs_prob_diff": round(max(diffs), 5),
                                "mean_abs_prob_diff": round(sum(diffs) / len(diffs), 5), "tolerance": tolerance}
    problems = []
    if max(diffs) > tolerance:
        problems.append(f"constrained score probabilities differ by {max(diffs):.4f} > {tolerance}")
    for stage in ("actor", "judge_free_text"):
        if out[stage]["greedy_agreement"] < GREEDY_AGREEMENT:
            problems.append(f"{stage}: greedy texts agree on {out[stage]['greedy_agreement']:.0%} < "
                            f"{GREEDY_AGREEMENT:.0%} of requests")
    if rel["left"]:
        problems.append(f"engine processes left after close: {rel['left']}")
    not_returned = out["memory_gib"].get("not_returned")
    if not_returned is not None and not_returned > MEMORY_TOLERANCE_GIB:
        problems.append(f"{not_returned} GiB of GPU memory not back after closing the engine")
    if problems:
        out["problems"] = problems
    return out


def _max_prob_diff(a, b) -> float:
    """Largest absolute difference between two engines' choice probabilities, over every sample's digits."""
    return max(abs(x - y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))


def section_hf_engine(args) -> dict[str, Any]:
    """The ``hf`` engine on the GPU (no vLLM needed): the path of every user without vLLM.

    float32 on the GPU against float32 on the CPU (greedy actor texts, constrained score probabilities of
    the same judgments); the follow-up reads (score probabilities answered from each judgment's own cache
    during generation) against ``choice_probs``' independent forward on the same device, in float32 and
    bf16; actor throughput in bf16 at two batch sizes. Without a GPU it runs the same comparisons with
    bf16 on the CPU (the C++ kernels) against float32, which checks the section itself."""
    import torch

    from metareward.config import ActorConfig, JudgeConfig
    from metareward.engines.hf import HFEngine
    from metareward.stages import actor, judge

    on_gpu = cuda()
    device = "cuda" if on_gpu else "cpu"
    model = model_path()
    prompts = _prompts(args.prompts)
    by_id = {p.id: p for p in prompts}
    con_cfg = JudgeConfig(n=3, max_tokens=48, scoring="constrained")
    # without a GPU the run checks the section itself (bf16 is slow on most CPUs): 32-token responses
    actor_reqs = actor.actor_requests(prompts, ActorConfig(k=4, max_tokens=96 if on_gpu else 32), run_seed=0,
                                      iteration=1)
    greedy_actor = _greedy(actor_reqs)
    out: dict[str, Any] = {"device": device, "prompts": len(prompts)}
    problems: list[str] = []

    def engine(dev: str, dtype: str, batch: int = 64, decode_kernel: bool = True) -> HFEngine:
        return HFEngine(model, device=dev, dtype=dtype, batch_size=batch, threads=args.threads,
                        decode_kernel=decode_kernel)

    def probs_in_order(eng: HFEngine, reqs) -> list[list[float]]:
        """``choice_probs`` in the requests' order (the engine answers in its batches' order)."""
        got = {o.id: o.probs for o in eng.choice_probs(reqs)}
        return [got[r.id] for r in reqs]

    def follow_up_run(eng: HFEngine):
        """Sampled judgments with their follow-up score reads, and an independent read of the same texts."""
        acts = {o.id: o for o in eng.generate(actor_reqs)}
        responses = [r for p in prompts for r in actor.responses_from_output(p, acts[p.id])][: 2 * len(prompts)]
        reqs = judge.judge_requests(by_id, responses, con_cfg, run_seed=0, iteration=1)
        outs = {o.id: o for o in eng.generate(reqs)}
        judgments = [j for r in responses for j in judge.judgments_from_output(r, outs[r.id], con_cfg)]
        follow = [s.choice_probs for r in responses for s in outs[r.id].samples]
        score_reqs = judge.score_requests(by_id, {r.id: r for r in responses}, judgments, con_cfg)
        return score_reqs, follow, probs_in_order(eng, score_reqs)

    test_dtypes = ("float32", "bfloat16") if on_gpu else ("bfloat16",)
    ref = engine("cpu", "float32", decode_kernel=not on_gpu)  # on a GPU machine: no C++ build for a reference
    try:
        ref_greedy = {o.id: o for o in ref.generate(greedy_actor)}
        for dtype in test_dtypes:
            eng = engine(device, dtype)
            try:
                score_reqs, follow, direct = follow_up_run(eng)
                g = {o.id: o for o in eng.generate(greedy_actor)}
                res: dict[str, Any] = {"judgments": len(score_reqs),
                                       "follow_ups_answered": sum(p is not None for p in follow)}
                if None in follow:
                    problems.append(f"{dtype}: {len(follow) - res['follow_ups_answered']} follow-ups unanswered")
                else:
                    res["follow_up_vs_choice_probs_max_abs"] = round(_max_prob_diff(follow, direct), 6)
                ref_probs = probs_in_order(ref, score_reqs)
                res["vs_cpu_float32_max_abs"] = round(_max_prob_diff(direct, ref_probs), 6)
                res["greedy_actor_agreement_vs_cpu_float32"] = round(
                    sum(g[k].texts == ref_greedy[k].texts for k in g) / len(g), 3)
                if on_gpu:
                    torch.cuda.synchronize()
                out[dtype] = res
                tol = PROB_TOLERANCE if dtype == "float32" else PROB_TOLERANCE_BF16
                for key in ("follow_up_vs_choice_probs_max_abs", "vs_cpu_float32_max_abs"):
                    if res.get(key, 0.0) > tol:
                        problems.append(f"{dtype}: {key} = {res[key]} > {tol}")
                if dtype == "float32" and res["greedy_actor_agreement_vs_cpu_float32"] < GREEDY_AGREEMENT:
                    problems.append(f"float32 greedy actor texts agree with the CPU on "
                                    f"{res['greedy_actor_agreement_vs_cpu_float32']:.0%} < {GREEDY_AGREEMENT:.0%}")
            finally:
                eng.close()
    finally:
        ref.close()

    # throughput: sampled actor tokens per second in bf16 (the default on a GPU), two batch sizes
    big = actor.actor_requests(prompts, ActorConfig(k=8, max_tokens=256 if on_gpu else 32), run_seed=1,
                               iteration=1)
    out["actor_throughput_bf16"] = {}
    for batch in ((64, 256) if on_gpu else (32,)):
        eng = engine(device, "bfloat16", batch)
        try:
            list(eng.generate(actor_reqs[:2]))  # warm-up
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            tokens = sum(o.generated_tokens for o in eng.generate(big))
            if on_gpu:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
            row = {"samples": sum(r.n for r in big), "tokens": tokens, "seconds": round(secs, 2),
                   "tokens_per_s": round(tokens / secs, 1)}
            if on_gpu:
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out["actor_throughput_bf16"][f"batch_{batch}"] = row
        finally:
            eng.close()
    if problems:
        out["problems"] = problems
    return out


def section_loop_hf(args) -> dict[str, Any]:
    """One iteration of ``configs/tiny-cpu.yaml`` with the ``hf`` engine on the GPU (dtype auto: bf16)."""
    return _one_iteration(args, name="hf")


def _dpo_pairs(n: int, repeat: int) -> list[dict[str, Any]]:
    """``n`` conversational pairs with longer answers (``repeat`` copies of each text) for a measurable step."""
    pairs = []
    for i in range(n):
        q, c, r = QA[i % len(QA)]
        pairs.append({"prompt": [{"role": "user", "content": f"({i}) {q}"}],
                      "chosen": [{"role": "assistant", "content": " ".join([c] * repeat)}],
                      "rejected": [{"role": "assistant", "content": " ".join([r] * repeat)}]})
    return pairs


def _flops_per_token(model) -> float:
    """Useful DPO FLOPs per sequence token: 4 forwards (policy fwd + bwd = 3, reference 1) of 2 x params."""
    params = sum(p.numel() for p in model.parameters())
    return 4 * 2 * params


def _dpo_result(metrics: dict[str, Any], tokens: int, seconds: float, flops_per_token: float, ceiling: float | None,
                dtype: str) -> dict[str, Any]:
    achieved = tokens * flops_per_token / seconds / 1e12
    res = {"dtype": dtype, "steps": metrics.get("steps"), "sequence_tokens": tokens, "seconds": round(seconds, 2),
           "tokens_per_s": round(tokens / seconds, 1), "achieved_tflops": round(achieved, 3),
           "loss_first": metrics.get("first", {}).get("loss"), "loss_last": metrics.get("last", {}).get("loss")}
    if ceiling:
        res["fraction_of_ceiling"] = round(achieved / ceiling, 3)
    return res


def _sequence_tokens(tokenizer, pairs) -> int:
    from metareward.training.dpo_native import tokenize_pair

    items = [tokenize_pair(tokenizer, p, 1024) for p in pairs]
    return sum(2 * len(t.prompt) + len(t.chosen) + len(t.rejected) for t in items if t is not None)


def section_dpo_native(args) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.config import TrainingConfig
    from metareward.training.dpo_native import train_dpo_native

    on_gpu = cuda()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    n, repeat, batch = (64, 6, 16) if on_gpu else (4, 1, 2)
    tok = AutoTokenizer.from_pretrained(model_path())
    model = AutoModelForCausalLM.from_pretrained(model_path(), dtype=dtype).to(device)
    cfg = TrainingConfig(beta=0.1, learning_rate=1e-6, epochs=1.0, batch_size=batch, gradient_accumulation=1,
                         max_length=1024, warmup_ratio=0.0, lr_scheduler="constant")
    if on_gpu:  # warm-up: kernels, allocator
        train_dpo_native(model, tok, _dpo_pairs(batch, repeat), cfg)
        torch.cuda.synchronize()
    pairs = _dpo_pairs(n, repeat)
    t = time.perf_counter()
    metrics = train_dpo_native(model, tok, pairs, cfg)
    if on_gpu:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    return _dpo_result(metrics, _sequence_tokens(tok, pairs), secs, _flops_per_token(model), args.ceiling,
                       str(dtype).replace("torch.", ""))


def section_dpo_trl(args) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.config import TrainingConfig
    from metareward.layout import RunLayout
    from metareward.records import PreferencePair
    from metareward.training.dpo import train_dpo

    on_gpu = cuda()
    n, repeat, batch = (64, 6, 16) if on_gpu else (4, 1, 2)
    pairs = [PreferencePair(id=f"p{i}", kind="actor", prompt_id=f"q{i}", prompt=p["prompt"][0]["content"],
                            chosen=p["chosen"][0]["content"], rejected=p["rejected"][0]["content"],
                            chosen_id=f"q{i}/r0", rejected_id=f"q{i}/r1", chosen_score=4.0, rejected_score=1.0)
             for i, p in enumerate(_dpo_pairs(n, repeat))]
    cfg = TrainingConfig(batch_size=batch, gradient_accumulation=1, max_length=1024, learning_rate=1e-6,
                         warmup_ratio=0.0, lr_scheduler="constant", precision="bfloat16" if on_gpu else "float32",
                         save_steps=100000)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_dpo(model_path(), pairs, RunLayout(tmp).model_of(1), cfg, Path(tmp) / "work",
                            threads=args.threads)
    tok = AutoTokenizer.from_pretrained(model_path())
    model = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)
    # TRL's train_runtime includes its first step's warm-up: the rate is a lower bound
    return _dpo_result(metrics, _sequence_tokens(tok, _dpo_pairs(n, repeat)), metrics["runtime_s"],
                       _flops_per_token(model), args.ceiling, metrics["precision"])


def section_loop_vllm(args) -> dict[str, Any]:
    return _one_iteration(args, name="vllm", gpu_memory_utilization=0.5)


def _one_iteration(args, **engine) -> dict[str, Any]:
    """The first iteration of ``configs/tiny-cpu.yaml`` end to end with these engine settings (on the GPU
    where there is one, dtype auto): stage seconds, the iteration's summary; fails without a trained model."""
    import dataclasses

    from metareward.config import load_config
    from metareward.layout import RunLayout
    from metareward.loop import Runner

    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run_dir = str(Path(tmp) / "run")
        cfg.engine = dataclasses.replace(cfg.engine, device="cuda" if cuda() else "cpu", dtype="auto",
                                         threads=args.threads, **engine)
        cfg.iterations = cfg.iterations[:1]
        cfg.training = dataclasses.replace(cfg.training, precision="auto")
        t = time.perf_counter()
        summaries = Runner(cfg).run()
        secs = time.perf_counter() - t
        it = RunLayout(cfg.run_dir).iteration(1)
        manifest = json.loads(it.manifest.read_text())
        model_dir = it.model
        assert (model_dir / "config.json").is_file(), f"no trained model in {model_dir}"
    return {"seconds": round(secs, 1), "stage_seconds": manifest.get("timings_s"), "summary": summaries[0]}


def section_accelerate_one_process(args) -> dict[str, Any]:
    from metareward.config import IterationConfig, RunConfig, TrainingConfig, dump_config
    from metareward.layout import RunLayout
    from metareward.records import PreferencePair, write_jsonl_atomic
    from metareward.store import IterationStore
    from metareward.training.launch import launch_training

    on_gpu = cuda()
    launcher = ("accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no "
                + ("--mixed_precision bf16" if on_gpu else "--cpu --mixed_precision no"))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cfg = RunConfig(run_dir=str(run_dir), prompts=str(run_dir / "unused.txt"),
                        training=TrainingConfig(batch_size=2, gradient_accumulation=1, max_length=256,
                                                learning_rate=1e-6, warmup_ratio=0.0, save_steps=100000,
                                                precision="auto", launcher=launcher),
                        iterations=[IterationConfig(prompts=len(QA))])
        cfg.engine.threads = args.threads
        dump_config(cfg, run_dir / "config.yaml")
        store = IterationStore(RunLayout(run_dir).iteration(1))
        store.manifest["model_in"] = model_path()
        store.save_manifest()
        pairs = [PreferencePair(id=f"p{i}", kind="actor", prompt_id=f"q{i}", prompt=q, chosen=c, rejected=r,
                                chosen_id=f"q{i}/r0", rejected_id=f"q{i}/r1", chosen_score=4.0, rejected_score=1.0)
                 for i, (q, c, r) in enumerate(QA)]
        write_jsonl_atomic(store.layout.artifact("actor_pairs"), pairs)
        write_jsonl_atomic(store.layout.artifact("judge_pairs"), [])
        t = time.perf_counter()
        metrics = launch_training(launcher, "dpo", run_dir, 1)
        secs = time.perf_counter() - t
        assert metrics["processes"] == 1, metrics
        assert (store.layout.model / "model.safetensors").is_file(), "no model written"
    return {"launcher": launcher, "seconds": round(secs, 1), "steps": metrics["steps"],
            "precision": metrics.get("precision"), "loss": metrics.get("train_loss")}


# --------------------------------------------------------------------------- driver


def run_section(name: str, python: str, args, timeout: float) -> dict[str, Any]:
    """Run one section in its own process (``python``), return its report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "section.json"
        cmd = [python, str(Path(__file__).resolve()), "--section", name, "--section-out", str(out),
               "--threads", str(args.threads), "--prompts", str(args.prompts)]
        if args.ceiling:
            cmd += ["--ceiling", str(args.ceiling)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        t = time.perf_counter()
        try:
            done = subprocess.run(cmd, env=env, timeout=max(timeout, 1), capture_output=True, text=True,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as e:
            tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return {"status": "failed", "error": f"over its time budget ({timeout:.0f}s)", "output_tail": tail[-2000:]}
        seconds = round(time.perf_counter() - t, 1)
        if out.is_file():
            res = json.loads(out.read_text())
            res["wall_s"] = seconds
            return res
        return {"status": "failed", "error": f"exit code {done.returncode}", "wall_s": seconds,
                "output_tail": (done.stdout + done.stderr)[-3000:]}


def section_main(args) -> None:
    """Inside a section's process: run it, write {status, ...} to --section-out."""
    fn = globals()[f"section_{args.section}"]
    try:
        res = fn(args)
        status = "failed" if res.get("problems") else "ok"
        res = {"status": status, **res}
    except BaseException as e:  # noqa: BLE001 - every failure becomes the section's report
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    Path(args.section_out).write_text(json.dumps(res, indent=1, default=str))


def vllm_python(args) -> tuple[str | None, str]:
    """The interpreter for vLLM's sections and why (None: no vLLM anywhere, with the reason)."""
    candidates = [sys.executable] + ([args.vllm_python] if args.vllm_python else [])
    for py in candidates:
        if not Path(py).is_file():
            continue
        probe = subprocess.run([py, "-c", "import vllm, torch; from vllm.platforms import current_platform as p; "
                                "print(vllm.__version__, p.device_type, torch.cuda.is_available())"],
                               capture_output=True, text=True, timeout=300)
        if probe.returncode == 0:
            version, device, has_cuda = probe.stdout.split()[-3:]
            if device == "cuda" or args.vllm_on_cpu:
                return py, f"vllm {version} ({device}) in {py}"
            return None, (f"vllm {version} in {py} is the {device} build; install vLLM's CUDA build there or pass "
                          "--vllm-python")
    return None, f"no vLLM importable from {', '.join(candidates)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="report path (default benchmarks/results/gpu-<date>.json; -no-gpu without one)")
    p.add_argument("--budget-s", type=float, default=480.0, help="total time budget; later sections skip past it")
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--vllm-on-cpu", action="store_true", help="run the vLLM sections with vLLM's CPU build")
    p.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--section-out", help=argparse.SUPPRESS)
    p.add_argument("--ceiling", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.section:
        section_main(args)
        return 0

    started = time.monotonic()
    import torch

    has_gpu = torch.cuda.is_available()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu-{date}{'' if has_gpu else '-no-gpu'}.json"
    report: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0) if has_gpu else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if has_gpu else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "model": "smollm2-135m (embedded SmolLM2-135M-Instruct)",
        "tolerances": {"constrained_prob_max_abs": PROB_TOLERANCE, "greedy_agreement_min": GREEDY_AGREEMENT,
                       "memory_not_returned_gib_max": MEMORY_TOLERANCE_GIB},
        "checks": {},
    }
    if not has_gpu:
        log("NO GPU: torch sees no CUDA device here. Running the parts a CPU can check quickly (matmul ceiling, "
            "the hf engine in bf16 on the CPU, DPO steps in float32, accelerate launch with one process); the vLLM, "
            "bf16-on-CUDA, loop and memory checks "
            "are skipped. This is not a GPU result.")
    vpy, vwhy = vllm_python(args)
    report["vllm"] = vwhy
    wanted = args.only or list(SECTIONS)
    for name in SECTIONS:
        if name not in wanted:
            continue
        left = args.budget_s - (time.monotonic() - started)
        if name in ("loop_vllm", "loop_hf") and not has_gpu:
            res = {"status": "skipped", "reason": "no GPU (the CPU runs of the loop are tests/test_e2e.py)"}
        elif name in VLLM_SECTIONS and (not has_gpu and not args.vllm_on_cpu):
            res = {"status": "skipped", "reason": "no GPU (the vLLM CPU build is tested by tests/test_engine_vllm.py)"}
        elif name in VLLM_SECTIONS and vpy is None:
            res = {"status": "skipped", "reason": vwhy}
        elif left < 20:
            res = {"status": "skipped", "reason": f"time budget ({args.budget_s:.0f}s) used up"}
        else:
            log(f"{name} ...")
            res = run_section(name, vpy if name in VLLM_SECTIONS else sys.executable, args, left)
        report["checks"][name] = res
        if name == "ceiling" and res.get("status") == "ok":
            args.ceiling = res.get("bfloat16_tflops") if has_gpu else res.get("float32_tflops")
        brief = {k: v for k, v in res.items() if k not in ("traceback", "output_tail", "summary", "stage_seconds")}
        log(f"{name}: {json.dumps(brief, default=str)[:600]}")
    report["total_s"] = round(time.monotonic() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    statuses = {k: v["status"] for k, v in report["checks"].items()}
    failed = [k for k, s in statuses.items() if s == "failed"]
    log(f"wrote {out} in {report['total_s']}s: " + ", ".join(f"{k} {s}" for k, s in statuses.items()))
    if not has_gpu:
        log("NO GPU was present: the skipped checks need one (run `make gpu-check` on a GPU machine).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
