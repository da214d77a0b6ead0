"""The ``metareward`` command: ``run | eval | report | prompts | eft | ...``.

Each subcommand lives in a module of ``metareward.commands`` that defines ``register(subparsers)``; this
file only finds them, parses the arguments and turns ``InputError`` into a one-line message and exit
code 2 (no traceback: the user's input was wrong, not the program).

Preemption: SIGTERM (what SLURM, Kubernetes and ``timeout`` send before killing) is handled like Ctrl-C
(SIGINT): it raises ``Terminated``, a ``KeyboardInterrupt``, in the main thread, so the work in flight is
abandoned through the same ``finally`` blocks (the engine's child processes, servers and Ray workers are
ended, the run directory's lock released), the message says how to resume, and the exit status is the
shell's convention, 128 + the signal: 130 for SIGINT, 143 for SIGTERM. A second SIGTERM during that
clean-up is ignored (it ends in bounded time; SIGKILL remains the way to stop it at once).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from metareward.errors import InputError


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` naming a module of ``metareward.commands`` (``run``, ``eval``
    ...), only that module's subcommands, so a command does not wait for the imports of the others
    (``eval`` and ``report`` load scipy, matplotlib and torch): a second ``run`` on a locked run
    directory stops within a second or two, not after every command's imports."""
    import metareward.commands as commands

    parser = argparse.ArgumentParser(prog="metareward", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    for name in [command] if command in names else names:
        importlib.import_module(f"metareward.commands.{name}").register(sub)
    plain_help(parser)
    return parser


DESCRIPTION = ("Meta-Rewarding (Wu et al. 2024): one model acts, judges and meta-judges itself,\n"
               "then learns from its own preferences by DPO.")
EPILOG = ("`metareward COMMAND --help` shows a command's options. Before a run, see its bill:\n"
          "`metareward plan configs/tiny-cpu.yaml`.")
_LITERAL = re.compile(r"``(.+?)``", re.S)


def plain_text(text: str) -> str:
    """A docstring as help: reStructuredText's ``literal`` marks dropped, a literal block's ``::`` made ``:``."""
    return re.sub(r"::$", ":", _LITERAL.sub(r"\1", text), flags=re.M)


def plain_help(parser: argparse.ArgumentParser) -> None:
    """Every description, epilog and help string of ``parser`` and its subcommands as plain text, and
    descriptions printed with their line breaks (commands' module docstrings hold examples and lists)."""
    for attr in ("description", "epilog"):
        if getattr(parser, attr):
            setattr(parser, attr, plain_text(getattr(parser, attr)))
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if isinstance(choice.help, str):
                    choice.help = plain_text(choice.help)
            for subparser in set(action.choices.values()):
                plain_help(subparser)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the command stops as it would on Ctrl-C (see the module docstring)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread. Yields a list that holds
    the signal number once one arrived, so the caller can tell a SIGTERM even when the clean-up it
    started raised something else. Off the main thread: no-op.

    Every SIGTERM raises, not only the first: a library with a bare ``except:`` (langdetect's profile
    loader, reached through the verifier's language check, is one) can swallow the first ``Terminated``
    and carry on, and the process would then run until SIGKILL. A repeated SIGTERM may interrupt the
    clean-up the first one started, as a second Ctrl-C does; every record write is atomic, so that
    loses at most the chunk in flight."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_term(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    with sigterm_as_interrupt() as term:
        try:
            return int(args.func(args) or 0)
        except InputError as e:
            if not term:
                print(f"metareward: error: {e}", file=sys.stderr)
                return 2
            interrupted = "terminated (SIGTERM)"
        except KeyboardInterrupt:
            interrupted = "terminated (SIGTERM)" if term else "interrupted"
        except BaseException:
            if not term:
                raise
            interrupted = "terminated (SIGTERM)"  # the clean-up after SIGTERM failed: still a preemption
    print(f"metareward: {interrupted}; rerun the same command to resume", file=sys.stderr)
    return 128 + (signal.SIGTERM if term else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
