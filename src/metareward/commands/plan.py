"""Print what a config will cost before it runs: work, FLOPs, time, memory and disk per iteration and stage.

Counts are exact where the config and the run directory determine them and bounds elsewhere (marked
``<=``); time on this machine comes from a benchmark JSON, a short calibration of the configured engine
(``--calibrate``) or an earlier iteration of the same run; time on named GPUs from their bf16 peak
times a stated efficiency. Exit status 1 when this machine cannot hold the run (memory, disk).
"""

from __future__ import annotations

import argparse

from metareward.config import load_config, parse_override
from metareward.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="what a config costs: work, FLOPs, time, memory, disk",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config, e.g. configs/tiny-cpu.yaml")
    p.add_argument("--run-dir", help="override run_dir (its finished stages make counts exact)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, as for `run` (repeatable)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--benchmark", metavar="JSON",
                   help="rates from this benchmarks/run.py result (default: benchmarks/results/paper-iteration.json "
                        "of a source checkout)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure the configured engine here for a few seconds (loads the model)")
    p.add_argument("--pool-like", metavar="POOL",
                   help="plan with POOL's prompts (cycled) in place of the config's pool, e.g. builtin:seed_prompts "
                        "for a pool not on this machine (prompt lengths assumed alike)")
    p.add_argument("--gpu-efficiency", metavar="GEN,TRAIN",
                   help="fractions of bf16 peak for generation and DPO on GPUs (default: the stated assumption)")
    p.set_defaults(func=run)


def parse_efficiency(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    try:
        gen, train = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--gpu-efficiency: expected two numbers like 0.15,0.35, got {text!r}") from None
    if not (0 < gen <= 1 and 0 < train <= 1):
        raise InputError(f"--gpu-efficiency: fractions must be in (0, 1], got {text!r}")
    return {"generation": gen, "train": train}


def run(args: argparse.Namespace) -> int:
    from metareward.plan import make_plan
    from metareward.plan.text import format_plan

    overrides = dict(parse_override(s) for s in args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = load_config(args.config, overrides)
    plan = make_plan(cfg, args.config, benchmark=args.benchmark, calibrate=args.calibrate,
                     gpu_efficiency=parse_efficiency(args.gpu_efficiency), pool_like=args.pool_like)
    print(plan.to_json() if args.json else format_plan(plan))
    return 1 if plan.problems else 0
