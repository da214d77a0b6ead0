"""The experiment's config: which arms, which seeds, the run config they share, and the held-out checks.

An experiment YAML holds a run config under ``run:`` (every field a ``metareward run`` config takes; its
``run_dir`` is replaced per arm and seed) and the experiment's own fields (``ExperimentConfig``). Each arm
is the shared run config with the arm's fixed settings (``ARMS``) and the user's ``overrides`` for it
(dotted keys, as ``--set`` takes them). Errors name the file and the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metareward.config import RunConfig, validate
from metareward.errors import InputError
from metareward.typed_yaml import build, errors_in, read_yaml, set_dotted

ARMS: dict[str, dict[str, Any]] = {
    "control": {"judge.kind": "verifier", "mode": "self-rewarding"},
    "self-rewarding": {"judge.kind": "self", "mode": "self-rewarding"},
    "meta-rewarding": {"judge.kind": "self", "mode": "meta-rewarding"},
}
"""The three arms of docs/experiment.md: the oracle-judge control (the verifier scores, actor pairs only),
Self-Rewarding (the model's own judge, actor pairs only) and Meta-Rewarding (own judge and meta-judge)."""


@dataclass
class ExperimentConfig:
    """What the experiment runs and measures (defaults: the quick variant's sizes)."""

    root: str = "runs/experiment"  # arms' run directories and the evaluation's caches
    out: str = "benchmarks/results/experiment.json"  # the results JSON
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    heldout: str = "builtin:verifiable_heldout"  # prompts with constraints, tasks disjoint from the train set
    heldout_limit: int = 0  # > 0: the first N held-out prompts
    answer_max_tokens: int = 96  # held-out answers (greedy)
    judge_pairs_k: int = 4  # held-out responses sampled from the seed model per prompt, for the judge check
    judge_eval_limit: int = 40  # held-out prompts the judge check samples pairs from (0: no judge check)
    bootstrap: int = 2000  # paired bootstrap resamples of the held-out prompts
    ifeval_limit: int = 0  # > 0: IFEval (fixed stratified sample) for the seed and each arm's last model
    ifeval_max_tokens: int = 256
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> {dotted key: value}
    run: dict[str, Any] = field(default_factory=dict)  # the shared run config (as a run YAML)


EXPERIMENT_FIELDS = ExperimentConfig.__dataclass_fields__


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and check an experiment YAML; ``overrides`` are dotted keys (``run.seed``, ``heldout_limit``)."""
    path = Path(path)
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    with errors_in(path):
        if not isinstance(data, dict):
            raise InputError(f"expected a mapping, got {data!r}")
        run, arm_overrides = data.pop("run", {}), data.pop("overrides", {})
        if not isinstance(run, dict):
            raise InputError(f"run: expected a mapping (a run config), got {run!r}")
        if not isinstance(arm_overrides, dict) or not all(isinstance(v, dict) for v in arm_overrides.values()):
            raise InputError("overrides: expected a mapping of arm -> {dotted key: value}")
        exp = build(ExperimentConfig, data, "")
        exp.run, exp.overrides = run, arm_overrides
        for arm in exp.arms + list(exp.overrides):
            if arm not in ARMS:
                raise InputError(f"arms: unknown arm {arm!r} (known: {', '.join(ARMS)})")
        if not exp.seeds:
            raise InputError("seeds: need at least one seed")
        if exp.bootstrap < 100:
            raise InputError(f"bootstrap: need at least 100 resamples, got {exp.bootstrap}")
        if exp.judge_pairs_k < 2:
            raise InputError(f"judge_pairs_k: need at least 2 responses per prompt, got {exp.judge_pairs_k}")
        for arm in exp.arms:  # every arm's run config is valid before anything runs
            arm_config(exp, arm, exp.seeds[0])
    return exp


def arm_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def arm_run_dict(exp: ExperimentConfig, arm: str, seed: int) -> dict[str, Any]:
    """The run config (as YAML data) of ``arm`` with run seed ``seed``."""
    data = copy.deepcopy(exp.run)
    for key, value in {**ARMS[arm], **exp.overrides.get(arm, {}), "seed": seed}.items():
        set_dotted(data, key, value)
    data["run_dir"] = str(Path(exp.root) / arm_name(arm, seed))
    return data


def arm_config(exp: ExperimentConfig, arm: str, seed: int) -> RunConfig:
    """The validated run config of ``arm`` (errors name ``run.<field>``)."""
    with errors_in(f"run ({arm})"):
        cfg = build(RunConfig, arm_run_dict(exp, arm, seed), "")
        validate(cfg)
    return cfg


def write_arm_config(exp: ExperimentConfig, arm: str, seed: int) -> Path:
    """The arm's run config written next to its run directory, so ``metareward run`` can rerun it alone."""
    path = Path(exp.root) / f"{arm_name(arm, seed)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(arm_run_dict(exp, arm, seed), sort_keys=False), encoding="utf-8")
    return path
