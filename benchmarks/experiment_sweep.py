"""DPO settings for the 135M model, chosen by measurement on the experiment's control arm (docs/experiment.md).

    python benchmarks/experiment_sweep.py configs/experiment.yaml --out benchmarks/results/experiment-sweep.json \
        --setting lr=5e-6 --setting lr=5e-5 --setting lr=1e-4,beta=0.3 --setting lr=5e-5,epochs=4

Each setting trains the seed model with DPO on the SAME pairs -- iteration 1's actor pairs of the control
arm's run (the experiment's ``root``/control-seed0, run first by ``metareward experiment``) -- and
measures the trained model on the held-out prompts exactly as the experiment does (greedy answers,
prompt- and instruction-level accuracy, difference from the seed model with its paired bootstrap
interval). One short run per setting; keys: ``lr``, ``beta``, ``epochs``, ``pairs`` (the first N pairs).
The JSON holds wall time, CPU time and the load average per setting: the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from metareward.experiment.driver import Experiment, cpu_seconds
from metareward.experiment.settings import arm_config, arm_name, load_experiment
from metareward.layout import RunLayout
from metareward.models import resolve_model
from metareward.records import PreferencePair, read_jsonl
from metareward.training.dpo_native import train_dpo_native_from_path

KEYS = {"lr": ("learning_rate", float), "beta": ("beta", float), "epochs": ("epochs", float), "pairs": (None, int)}


def parse_setting(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--setting {text!r}: unknown key {key!r} (known: {', '.join(KEYS)})")
        out[key] = KEYS[key][1](value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True, type=parse_setting)
    args = ap.parse_args()
    exp = load_experiment(args.config)
    cfg = arm_config(exp, "control", exp.seeds[0])
    pairs = read_jsonl(RunLayout(cfg.run_dir).iteration(1).artifact("actor_pairs"), PreferencePair)
    experiment = Experiment(exp)
    seed_model = resolve_model(cfg.model)
    seed_eval = experiment.evaluate(cfg, seed_model, "seed")
    results = {"config": args.config, "pairs_available": len(pairs), "seed": seed_eval, "settings": []}
    out = Path(args.out)
    for setting in args.setting:
        training = dataclasses.replace(cfg.training, **{KEYS[k][0]: v for k, v in setting.items() if KEYS[k][0]})
        used = pairs[: int(setting["pairs"])] if "pairs" in setting else pairs
        name = "sweep-" + "-".join(f"{k}{v:g}" for k, v in setting.items())
        model_dir = Path(exp.root) / "sweep" / name
        started, cpu0 = time.monotonic(), cpu_seconds()
        metrics = None
        if not (model_dir / "config.json").is_file():
            metrics = train_dpo_native_from_path(seed_model, used, model_dir, training, threads=cfg.engine.threads)
        row = {"setting": setting, "pairs": len(used), "train": metrics,
               **experiment.evaluate(cfg, str(model_dir), f"{arm_name('control', exp.seeds[0])}-{name}"),
               "wall_seconds": round(time.monotonic() - started, 1), "cpu_seconds": round(cpu_seconds() - cpu0, 1),
               "loadavg": [round(x, 2) for x in os.getloadavg()]}
        results["settings"].append(row)
        out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        ps = row["vs_seed"]["prompt_strict"]
        print(f"{name}: prompt strict {row['prompt_strict']:.1f} ({ps['diff']:+.1f} {ps['ci95']}) "
              f"length {row['mean_length_chars']:.0f}", flush=True)


if __name__ == "__main__":
    main()
