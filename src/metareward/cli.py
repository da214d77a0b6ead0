"""The ``metareward`` command: ``run | eval | report | prompts | eft | ...``.

Each subcommand lives in a module of ``metareward.commands`` that defines ``register(subparsers)``; this
file only finds them, parses the arguments and turns ``InputError`` into a one-line message and exit
code 2 (no traceback: the user's input was wrong, not the program).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from metareward.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    import metareward.commands as commands

    parser = argparse.ArgumentParser(prog="metareward", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"metareward.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"metareward: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metareward: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
