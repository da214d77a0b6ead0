"""``metareward run CONFIG``: run (or resume) the iterations of a config.

Rerunning the same command after a crash or Ctrl-C resumes: finished stages are skipped, a half-done
generation stage continues from its last finished chunk.
"""

from __future__ import annotations

import argparse
import json

from metareward.config import load_config, parse_override
from metareward.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run or resume Meta-Rewarding iterations", description=__doc__)
    p.add_argument("config", help="YAML run config, e.g. configs/tiny-cpu.yaml")
    p.add_argument("--run-dir", help="override run_dir")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set engine.threads=2 --set iterations.0.prompts=4 (repeatable)",
    )
    p.add_argument("--check", action="store_true",
                   help="validate the config and inputs and print the plan (`metareward plan`), load no weights, "
                        "exit; status 1 when this machine cannot hold the run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metareward.loop import Runner
    from metareward.plan import make_plan
    from metareward.plan.text import format_plan
    from metareward.runlock import run_lock

    overrides = dict(parse_override(s) for s in args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = load_config(args.config, overrides)
    runner = Runner(cfg)
    if args.check:
        pool = runner.preflight()
        print(f"ok: {args.config} is valid; {len(pool)} prompts; model {cfg.model}")
        try:
            plan = make_plan(cfg, args.config)
        except (InputError, OSError, ValueError) as e:  # e.g. a hub model whose config.json is not here
            print(f"plan unavailable: {e}")
            return 0
        print(format_plan(plan))
        return 1 if plan.problems else 0
    runner.preflight()
    with run_lock(runner.layout, command="run"):  # a second writer stops here, before the plan; run() re-enters
        try:  # the bill, printed before paying it; a plan that cannot be made never stops the run
            print(format_plan(make_plan(cfg, args.config)), flush=True)
        except (InputError, OSError, ValueError) as e:
            print(f"plan unavailable: {e}", flush=True)
        summaries = runner.run()
    print(json.dumps({"run_dir": cfg.run_dir, "iterations": len(summaries)}))
    return 0
