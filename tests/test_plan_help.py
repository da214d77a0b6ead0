"""`metareward --help` and every subcommand's help read as help: no reStructuredText markup left."""

from __future__ import annotations

import argparse

import pytest

from metareward import cli


def parsers(parser: argparse.ArgumentParser, name: str = "metareward"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


ALL = dict(parsers(cli.build_parser()))


@pytest.mark.parametrize("name", sorted(ALL))
def test_help_has_no_markup(name):
    text = ALL[name].format_help()
    assert "``" not in text, name
    assert not any(line.rstrip().endswith("::") for line in text.splitlines()), name


def test_top_level_help_says_what_the_program_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.splitlines()[2] == "Meta-Rewarding (Wu et al. 2024): one model acts, judges and meta-judges itself,"
    assert "plan      what a config costs" in out and "pairs     what-if" in out


def test_plain_text():
    assert cli.plain_text("``metareward run``: go\nExamples::\n\n  x") == "metareward run: go\nExamples:\n\n  x"
    assert cli.plain_text("a ``b\nc`` d") == "a b\nc d"
