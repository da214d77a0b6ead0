"""How close the planner's time estimate comes to a measured run (issue 30: within 30%).

    python benchmarks/plan_check.py RUN_DIR --config configs/tiny-cpu.yaml --out benchmarks/results/plan-tiny.json

RUN_DIR is a finished run of CONFIG on this machine (its manifests hold each stage's seconds), or
``--measured`` gives stage seconds recorded elsewhere (``--measured-source`` says where). Writes:

* ``upfront``: the plan of CONFIG made before anything ran (a fresh run directory; rates from the default
  benchmark JSON, or ``--calibrate``), per iteration and stage, beside the measured seconds;
* ``from_iteration_1``: the plan of iteration 2 made from a copy of RUN_DIR holding iteration 1 only (its
  lengths, yields and per-stage rates measured there), beside iteration 2's measured seconds;
* the load average while the plan was made (``--calibrate`` measures the machine as loaded then).

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
    """Stage seconds of each finished iteration (in order; an unfinished one ends the list)."""
    out = []
    for i in run.iterations():
        stages = json.loads(run.iteration(i).manifest.read_text())["stages"]
        if not stages.get("train", {}).get("done"):
            break
        out.append({s: stages[s]["seconds"] for s in TIMED if s in stages})
    return out


def compare(planned: dict[str, float | None], measured: dict[str, float]) -> dict:
    rows = {s: {"planned_s": None if planned.get(s) is None else round(planned[s], 1), "measured_s": measured[s]}
            for s in measured}
    total_p = sum(v for s, v in planned.items() if s in measured and v is not None)
    total_m = sum(measured.values())
    return {"stages": rows, "planned_total_s": round(total_p, 1), "measured_total_s": round(total_m, 1),
            "planned_over_measured": round(total_p / total_m, 3) if total_m else None}


def parse_measured(text: str) -> list[dict[str, float]]:
    """``actor=8.8,judge=19.4;actor=6.4,judge=17.6``: stage seconds per iteration, iterations split by ``;``."""
    return [{k: float(v) for k, v in (item.split("=") for item in part.split(","))} for part in text.split(";")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="a finished run of CONFIG (or give --measured)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--measured", help="stage seconds measured elsewhere, e.g. 'actor=8.8,judge=19.4;actor=6.4,...'")
    ap.add_argument("--measured-source", default="", help="where --measured comes from (recorded in the JSON)")
    ap.add_argument("--out")
    args = ap.parse_args()
    load_before = os.getloadavg()
    run = RunLayout(args.run_dir or Path(tempfile.gettempdir()) / "no-run")
    measured = parse_measured(args.measured) if args.measured else measured_seconds(run)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, {"run_dir": str(Path(tmp) / "fresh")})
        upfront = make_plan(cfg, args.config, calibrate=args.calibrate)
        result = {
            "config": args.config, "run_dir": args.run_dir, "measured_source": args.measured_source or args.run_dir,
            "upfront": {"rates": upfront.rates.source,
                        "iterations": [compare(p, m) for p, m in zip(upfront.seconds_here, measured, strict=False)]},
        }
        total_p = sum(r["planned_total_s"] for r in result["upfront"]["iterations"])
        total_m = sum(r["measured_total_s"] for r in result["upfront"]["iterations"])
        result["upfront"]["planned_over_measured"] = round(total_p / total_m, 3)
        if len(measured) >= 2 and args.run_dir and not args.measured:
            partial = Path(tmp) / "partial"
            partial.mkdir()
            shutil.copy(run.config, RunLayout(partial).config)
            shutil.copytree(run.iteration(1).dir, RunLayout(partial).iteration(1).dir,
                            ignore=shutil.ignore_patterns(run.iteration(1).model.name))
            cfg2 = load_config(args.config, {"run_dir": str(partial)})
            later = make_plan(cfg2, args.config)
            result["from_iteration_1"] = {"rates": later.rates.source, **compare(later.seconds_here[1], measured[1])}
    result["load_average_while_planning"] = [load_before, os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
