"""The Python API: load a config, run the loop, read what it wrote.

Three verbs over the modules that do the work (nothing here re-implements them):

* ``load_config(path, overrides)`` is ``metareward.config.load_config``: a YAML file, dotted-key
  overrides (``{"iterations.0.prompts": 4}``, as ``--set`` on the command line), typed and validated,
  errors naming the file and field.
* ``run(config)`` is ``metareward run``: ``metareward.loop.Runner(config).run()``, which runs or resumes
  every iteration and returns one summary dict per iteration (the same dict as ``manifest.json``'s
  ``summary``). A config can also be given as a path.
* ``read_records(run_dir, iteration, artifact)`` / ``read_pairs(run_dir, ...)`` read an iteration's JSONL
  artifacts back as the record dataclasses of ``metareward.records`` (through ``records.read_jsonl``,
  so a malformed line is an error naming file and line).

The loop (and with it torch) is imported only when ``run`` is called, so ``import metareward`` and
reading records stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metareward.config import RunConfig
from metareward.config import load_config as _load_config
from metareward.errors import InputError
from metareward.layout import ARTIFACT_RECORDS, PAIR_ARTIFACTS, RunLayout
from metareward.records import PreferencePair, read_jsonl

if TYPE_CHECKING:
    from metareward.engines.base import Engine

ARTIFACTS: dict[str, type] = ARTIFACT_RECORDS
"""Each artifact of an iteration folder (``iter_<i>/<name>.jsonl``) and the record class of its lines
(``layout.ARTIFACT_RECORDS``)."""


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated run config from a YAML file; ``overrides`` maps dotted keys to values
    (``{"run_dir": "runs/x", "iterations.0.prompts": 4}``) and is applied before validation."""
    return _load_config(path, dict(overrides) if overrides else None)


def run(
    config: RunConfig | str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    engine_factory: Callable[[str], Engine] | None = None,
    echo: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Run or resume every iteration of ``config`` (a ``RunConfig`` or a YAML path); the summaries, one
    per iteration.

    The same as ``metareward run``: a rerun after a crash resumes from the run directory.
    ``overrides`` applies only when ``config`` is a path. ``engine_factory(model_path)`` replaces the
    configured engine (any ``metareward.engines.base.Engine``); ``echo`` receives the progress lines
    (``None`` silences them).
    """
    from metareward.loop import Runner

    if isinstance(config, RunConfig):
        if overrides:
            raise TypeError("run(): overrides apply to a config path; pass them to load_config() instead")
        cfg = config
    else:
        cfg = load_config(config, overrides)
    return Runner(cfg, engine_factory=engine_factory, echo=echo or (lambda _line: None)).run()


def iterations(run_dir: str | Path) -> list[int]:
    """The iteration numbers (1, 2, ...) that have a folder in ``run_dir``, in order."""
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: run directory not found")
    return RunLayout(run_dir).iterations()


def read_records(run_dir: str | Path, iteration: int, artifact: str) -> list[Any]:
    """The records of one artifact of one iteration, e.g. ``read_records("runs/tiny", 1, "judgments")``.

    ``artifact`` is a key of ``ARTIFACTS``; a missing file is an ``InputError`` naming it (the stage has
    not run yet)."""
    if artifact not in ARTIFACTS:
        raise ValueError(f"unknown artifact {artifact!r}; expected one of {sorted(ARTIFACTS)}")
    path = RunLayout(run_dir).iteration(iteration).artifact(artifact)
    if not path.is_file():
        raise InputError(f"{path}: not found (has iteration {iteration} reached that stage?)")
    return read_jsonl(path, ARTIFACTS[artifact])


def read_pairs(run_dir: str | Path, iteration: int | None = None, kind: str | None = None) -> list[PreferencePair]:
    """The DPO pairs of one iteration, or of every iteration in order when ``iteration`` is None.

    ``kind`` = ``"actor"`` or ``"judge"`` keeps one kind; None gives actor pairs then judge pairs, the
    order DPO receives them in. Only iterations whose pairs stage finished are read when
    ``iteration`` is None."""
    if kind not in (None, "actor", "judge"):
        raise ValueError(f"kind must be 'actor', 'judge' or None, got {kind!r}")
    kinds = ["actor", "judge"] if kind is None else [kind]
    if iteration is None:
        run = RunLayout(run_dir)
        chosen = [
            i for i in iterations(run_dir)
            if all(run.iteration(i).artifact(name).is_file() for name in PAIR_ARTIFACTS)
        ]
    else:
        chosen = [iteration]
    pairs: list[PreferencePair] = []
    for i in chosen:
        for k in kinds:
            pairs.extend(read_records(run_dir, i, f"{k}_pairs"))
    return pairs
