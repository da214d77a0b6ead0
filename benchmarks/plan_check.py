"""How close the planner's time estimate comes to a measured run (issue 30: within 30%).

    python benchmarks/plan_check.py RUN_DIR --config configs/tiny-cpu.yaml --out benchmarks/results/plan-tiny.json

RUN_DIR is a finished run of CONFIG on this machine (its manifests hold each stage's seconds). Writes:

* ``upfront``: the plan of CONFIG made before anything ran (a fresh run directory; rates from the default
  benchmark JSON, or ``--calibrate``), per iteration and stage, beside the measured seconds;
* ``from_iteration_1``: the plan of iteration 2 made from a copy of RUN_DIR holding iteration 1 only (its
  lengths, yields and per-stage rates measured there), beside iteration 2's measured seconds;
* the load average before and after: a loaded machine runs slower than the rates it was planned with.

Stage seconds compared are the manifests' (what the loop times); the process's start-up is not in them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metareward.config import load_config  # noqa: E402
from metareward.layout import RunLayout  # noqa: E402
from metareward.plan import make_plan  # noqa: E402

TIMED = ("actor", "judge", "meta_judge", "pairs", "train")


def measured_seconds(run: RunLayout) -> list[dict[str, float]]:
    out = []
    for i in run.iterations():
        stages = json.loads(run.iteration(i).manifest.read_text())["stages"]
        out.append({s: stages[s]["seconds"] for s in TIMED if s in stages})
    return out


def compare(planned: dict[str, float | None], measured: dict[str, float]) -> dict:
    rows = {s: {"planned_s": None if planned.get(s) is None else round(planned[s], 1), "measured_s": measured[s]}
            for s in measured}
    total_p = sum(v for s, v in planned.items() if s in measured and v is not None)
    total_m = sum(measured.values())
    return {"stages": rows, "planned_total_s": round(total_p, 1), "measured_total_s": round(total_m, 1),
            "planned_over_measured": round(total_p / total_m, 3) if total_m else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    load_before = os.getloadavg()
    run = RunLayout(args.run_dir)
    measured = measured_seconds(run)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, {"run_dir": str(Path(tmp) / "fresh")})
        upfront = make_plan(cfg, args.config, calibrate=args.calibrate)
        result = {
            "config": args.config, "run_dir": args.run_dir,
            "upfront": {"rates": upfront.rates.source,
                        "iterations": [compare(p, m) for p, m in zip(upfront.seconds_here, measured, strict=False)]},
        }
        total_p = sum(r["planned_total_s"] for r in result["upfront"]["iterations"])
        total_m = sum(r["measured_total_s"] for r in result["upfront"]["iterations"])
        result["upfront"]["planned_over_measured"] = round(total_p / total_m, 3)
        if len(measured) >= 2:
            partial = Path(tmp) / "partial"
            partial.mkdir()
            shutil.copy(run.config, RunLayout(partial).config)
            shutil.copytree(run.iteration(1).dir, RunLayout(partial).iteration(1).dir,
                            ignore=shutil.ignore_patterns(run.iteration(1).model.name))
            cfg2 = load_config(args.config, {"run_dir": str(partial)})
            later = make_plan(cfg2, args.config)
            result["from_iteration_1"] = {"rates": later.rates.source, **compare(later.seconds_here[1], measured[1])}
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
