"""``metareward report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page about a run, or several side by side.

With one run directory: drift alarms, the iteration table, score/length/pair/bias figures, every training
step's curves, examples that follow prompts from their responses to the pairs that trained the next
model, and eval results (default output RUN_DIR/report.html). With two or more: the runs on one page,
one colour each (``--out`` required).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metareward.errors import InputError


def _examples(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of prompts or 'all', got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def register(subparsers) -> None:
    from metareward.report.examples import DEFAULT_EXAMPLES

    p = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html (drift alarms, curves, examples, win rates), or compare several runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories written by metareward run")
    p.add_argument("--out", type=Path, default=None,
                   help="output HTML file (default RUN_DIR/report.html for one run; required for several)")
    p.add_argument("--eval", type=Path, default=None, dest="eval_path",
                   help="eval results JSON for a single run (default RUN_DIR/eval/eval.json when present)")
    p.add_argument("--examples", type=_examples, default=DEFAULT_EXAMPLES, metavar="N",
                   help=f"prompts shown per iteration, a fixed seeded sample (default {DEFAULT_EXAMPLES}; 'all': every one)")
    p.add_argument("--prompt", action="append", default=[], dest="prompts", metavar="ID",
                   help="also show this prompt id in every iteration that has it (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.run_dirs) == 1:
        from metareward.report import write_report

        path = write_report(args.run_dirs[0], args.out, args.eval_path, args.examples, args.prompts)
    else:
        from metareward.report import write_compare

        if args.out is None:
            raise InputError("--out: required when comparing several runs (e.g. --out compare.html)")
        if args.eval_path is not None:
            raise InputError("--eval: only for a single run; each compared run uses its own eval/eval.json")
        path = write_compare(args.run_dirs, args.out)
    print(f"written: {path}")
    return 0
