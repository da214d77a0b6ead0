"""Where one decoding step of the hf engine goes: decoder, LM head, sampler (issue 6, actor goal).

    python benchmarks/decode_step.py --batch 256 --steps 100

Prefills ``batch / 4`` actor prompts, opens 4 sample rows per prompt (as the actor stage does), then
times ``--steps`` decoding steps with the engine's own pieces (``HFEngine._decode``'s decoder and head,
``HFEngine._sample``: the C++ sampler on bf16 logits, else ``sample_next`` in place) and prints the
mean of each part after 10 warm-up steps, plus the time the bf16 linear layers alone would need at this
batch (the roof the step is compared against). Tokens fed are random, so the sampler sees flatter
distributions than real text (more wide nuclei).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import instruction  # noqa: E402

from metareward.engines.hf import HFEngine  # noqa: E402
from metareward.models import resolve_model  # noqa: E402


def linears_only_ms(engine: HFEngine, rows: int, reps: int = 5) -> float:
    """Best time of one step's linear layers (every decoder layer's and the head) at ``rows`` rows."""
    weights = [m.weight for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for w in weights:
            torch.mm(xs[w.shape[1]], w.t())
        best = min(best, time.perf_counter() - t)
    return best * 1e3


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = HFEngine(resolve_model("smollm2-135m"), batch_size=args.batch)
    n_prompts = args.batch // 4
    prompts = [engine.render(({"role": "user", "content": instruction(i)},)) for i in range(n_prompts)]
    logits, cache, mask, last = engine._prefill(prompts, args.steps + 1)
    owner = torch.arange(n_prompts).repeat_interleave(4)
    cache.start_rows(owner, mask)
    last = last[owner]
    rows = len(owner)
    buffers = engine._logit_buffers(rows)
    nxt = torch.randint(100, 1000, (rows,))
    temperature, top_p = torch.full((rows,), 0.8), torch.full((rows,), 0.95)
    gen = torch.Generator().manual_seed(0)
    totals = [0.0, 0.0]
    for step in range(args.steps):
        last = last + 1
        cache.add_suffix(torch.ones((rows, 1), dtype=torch.bool))
        t0 = time.perf_counter()
        logits = engine._decode(cache, nxt, last, buffers)
        t1 = time.perf_counter()
        nxt = engine._sample(logits, temperature, top_p, gen, buffers[2])
        t2 = time.perf_counter()
        if step >= 10:
            totals[0] += t1 - t0
            totals[1] += t2 - t1
    n = args.steps - 10
    decode, sample = (1e3 * t / n for t in totals)
    print(f"batch {rows}, {engine.dtype}, contexts ~{int(mask.sum(1).float().mean())} + up to {args.steps} tokens")
    print(f"decoder + LM head {decode:.1f} ms | sampler {sample:.1f} ms | {rows / (decode + sample) * 1e3:.0f} tok/s")
    print(f"linear layers alone at {rows} rows: {linears_only_ms(engine, rows):.1f} ms")


if __name__ == "__main__":
    main()
