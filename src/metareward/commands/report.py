"""``metareward report RUN_DIR``: one self-contained HTML page with the run's diagnostics and eval results."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html: score drift, lengths, pairs, meta-judge bias, win rates",
        description=__doc__,
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by metareward run")
    p.add_argument("--out", type=Path, default=None, help="output HTML file (default RUN_DIR/report.html)")
    p.add_argument("--eval", type=Path, default=None, dest="eval_path",
                   help="eval results JSON (default RUN_DIR/eval/eval.json when present)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metareward.report import write_report

    path = write_report(args.run_dir, args.out, args.eval_path)
    print(f"written: {path}")
    return 0
