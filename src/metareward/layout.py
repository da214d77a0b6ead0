"""The run directory's layout: the one place that names its folders and files.

Every module that reads or writes a run goes through ``RunLayout`` (and the ``IterationLayout`` it hands
out), so a file name is spelled once. Layout::

    RUN_DIR/
      config.yaml                   the resolved config (every default spelled out)
      .lock                         the writer's lock (one process writes a run at a time)
      iter_0/                       optional SFT step (its model starts iteration 1)
      iter_1/
        manifest.json               per stage: done, count, seconds, settings hash; model in/out; summary
        prompts.jsonl responses.jsonl judgments.jsonl meta_judgments.jsonl
        actor_pairs.jsonl judge_pairs.jsonl
        model/                      the trained model (next iteration's start)
        .work/                      in-flight chunk logs and training checkpoints (removed when done)
      eval/                         evaluation results and their annotation caches

Building a layout creates nothing: only ``IterationLayout.create`` (and the writers that call it) make
folders, so read-only commands (``report``, ``plan``) can open any path without side effects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response

ARTIFACTS: dict[str, str] = {
    "prompts": "prompts.jsonl",
    "responses": "responses.jsonl",
    "judgments": "judgments.jsonl",
    "meta_judgments": "meta_judgments.jsonl",
    "actor_pairs": "actor_pairs.jsonl",
    "judge_pairs": "judge_pairs.jsonl",
}
"""Each artifact's name (what ``read_records`` takes) → its file in an iteration folder."""

ARTIFACT_RECORDS: dict[str, type] = {
    "prompts": Prompt,
    "responses": Response,
    "judgments": Judgment,
    "meta_judgments": MetaJudgment,
    "actor_pairs": PreferencePair,
    "judge_pairs": PreferencePair,
}
"""Each artifact's name → the record class of its lines (``records.read_jsonl(path, cls)``)."""

PAIR_ARTIFACTS: tuple[str, ...] = ("actor_pairs", "judge_pairs")
"""The artifacts DPO trains on, in training order."""

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
MODEL_DIR = "model"
WORK_DIR = ".work"
LOCK_FILE = ".lock"
EVAL_DIR = "eval"
_ITERATION_DIR = re.compile(r"iter_(\d+)")


def iteration_label(iteration: int) -> str:
    """The folder name and the label of iteration ``iteration``'s model in reports (``iter_3``)."""
    return f"iter_{iteration}"


def parse_iteration_label(label: str) -> int | None:
    """``iter_3`` → 3; anything else → None."""
    m = _ITERATION_DIR.fullmatch(label)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class IterationLayout:
    """One iteration's folder: its artifacts, manifest, trained model and work folder."""

    dir: Path
    iteration: int

    def artifact(self, name: str) -> Path:
        """The file of artifact ``name`` (a key of ``ARTIFACTS``, e.g. ``"judgments"``)."""
        try:
            return self.dir / ARTIFACTS[name]
        except KeyError:
            raise ValueError(f"unknown artifact {name!r}; one of {', '.join(ARTIFACTS)}") from None

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST_FILE

    @property
    def model(self) -> Path:
        return self.dir / MODEL_DIR

    @property
    def work(self) -> Path:
        return self.dir / WORK_DIR

    def chunk_log(self, pass_name: str, settings_key: str) -> Path:
        """The chunk log of one generation pass of a stage whose settings hash is ``settings_key``."""
        return self.work / f"{pass_name}-{settings_key}.chunks.jsonl"

    def train_work(self, kind: str) -> Path:
        """Checkpoints and logs of a training step (``"dpo"`` or ``"sft"``)."""
        return self.work / kind

    def exists(self) -> bool:
        return self.dir.is_dir()

    def create(self) -> IterationLayout:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class RunLayout:
    """A run directory. Constructing one touches no file."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL_DIR

    def iteration(self, i: int) -> IterationLayout:
        return IterationLayout(self.root / iteration_label(i), i)

    def iterations(self, with_sft: bool = False) -> list[int]:
        """The iterations (>= 1) with a folder on disk, in order; iteration 0 (the optional SFT step) only
        when ``with_sft``."""
        if not self.root.is_dir():
            return []
        found = (parse_iteration_label(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(i for i in found if i is not None and (i >= 1 or with_sft))

    def model_of(self, iteration: int) -> Path:
        """The model iteration ``iteration`` trained (``iter_I/model``)."""
        return self.iteration(iteration).model
