"""``metareward experiment CONFIG``: the verifiable-instruction experiment (docs/experiment.md).

Runs every arm (control with the verifier judge, Self-Rewarding, Meta-Rewarding) from the seed model for
each seed, measures each iteration's model on the held-out prompts, and writes the results JSON named by
the config's ``out``. Rerunning the same command resumes: the arms' runs and the evaluation's generations
are chunk-logged. ``metareward report RUN_A RUN_B`` compares the arms' run directories (under ``root``).
"""

from __future__ import annotations

import argparse

from metareward.config import parse_override


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="control vs Self- vs Meta-Rewarding on verifiable instructions",
                       description=__doc__)
    p.add_argument("config", help="experiment YAML, e.g. configs/experiment-quick.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set heldout_limit=40 --set run.iterations.0.prompts=16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metareward.experiment.driver import Experiment
    from metareward.experiment.report import format_table
    from metareward.experiment.settings import load_experiment

    exp = load_experiment(args.config, dict(parse_override(s) for s in args.set))
    results = Experiment(exp).run()
    print(format_table(results))
    print(f"results: {exp.out}")
    return 0
