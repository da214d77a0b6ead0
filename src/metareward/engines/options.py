"""The engine options of every command that builds an engine itself (``eval``, ``prompts generate``,
``eft build``): one parser, one validation.

``--engine hf|vllm|openai``, ``--device``, ``--dtype``, ``--batch-size``, ``--threads``, plus
``--engine-config CONFIG`` (the ``engine:`` section of a run config, e.g. the one the pool or the EFT data
is for) and ``--engine-set KEY=VALUE`` for any other engine setting (``--engine-set
base_url=http://host:8000/v1``). Flags win over ``--engine-set``, which wins over the file, which wins
over the command's default config (``eval --run-dir``: the run's), which wins over the defaults. Every
value goes through ``config.load_engine_config`` (types and ranges), applied in that order, so an error
names the option that made the settings invalid. The engine itself always comes from ``make_engine``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metareward.config import ENGINES, EngineConfig, load_engine_config, parse_override
from metareward.errors import InputError

FLAGS = ("engine", "device", "dtype", "batch_size", "threads")  # argparse names of the direct flags


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine options (see the module docstring) to ``parser``."""
    g = parser.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default=None, help="generation engine (default: the config's, else hf)")
    g.add_argument("--engine-config", metavar="CONFIG", help="take the engine: section of this run config YAML")
    g.add_argument("--engine-set", action="append", default=[], metavar="KEY=VALUE",
                   help="set an engine setting, e.g. --engine-set base_url=http://host:8000/v1 (repeatable)")
    g.add_argument("--device", default=None, help="hf/vllm: auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"], help="hf/vllm")
    g.add_argument("--batch-size", type=int, default=None, help="hf: sequences per forward pass")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (0: torch's default)")


def engine_config_from_args(args: argparse.Namespace, default_config: str | Path | None = None) -> EngineConfig:
    """The ``EngineConfig`` the options describe, over the ``engine:`` section of ``--engine-config`` or
    else of ``default_config`` (None: the defaults). Checked after each option is applied, in the order
    of the module docstring, so an error names the file, or the option, and the field."""
    path = args.engine_config or default_config
    steps: list[tuple[str, dict[str, Any]]] = []
    for text in args.engine_set:
        key, value = parse_override(text)
        key = key.removeprefix("engine.")
        if "." in key:
            raise InputError(f"--engine-set {text!r}: expected an engine setting, e.g. base_url=...")
        steps.append((f"--engine-set {text!r}", {key: value}))
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None:
            steps.append((f"--{name.replace('_', '-')} {value}", {"name" if name == "engine" else name: value}))
    cfg = load_engine_config(path)  # the file alone: its errors name the file
    where = f"{path}: " if path is not None else "command line: "
    overrides: dict[str, Any] = {}
    for option, setting in steps:
        overrides.update(setting)
        try:
            cfg = load_engine_config(path, overrides)
        except InputError as e:
            raise InputError(f"{option}: {str(e).removeprefix(where)}") from None
    return cfg
