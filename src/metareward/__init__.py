"""metareward: the Meta-Rewarding loop (Wu et al. 2024, arXiv 2407.19594).

One model plays actor, judge and meta-judge; its own judgments and meta-judgments become DPO pairs
that improve both its answers and its judging, with no human labels.

The public Python API (``metareward.api``)::

    from metareward import load_config, run, read_pairs

    cfg = load_config("configs/tiny-cpu.yaml", {"run_dir": "runs/demo"})
    run(cfg)                            # runs or resumes every iteration
    pairs = read_pairs(cfg.run_dir, 1)  # iteration 1's actor + judge DPO pairs

Names are resolved lazily (module ``__getattr__``): ``import metareward`` imports neither the config
machinery nor torch; the loop, and torch with it, is imported when ``run`` is first called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "metareward.api",
    "run": "metareward.api",
    "read_pairs": "metareward.api",
    "read_records": "metareward.api",
    "RunConfig": "metareward.config",
    "PreferencePair": "metareward.records",
    "InputError": "metareward.errors",
}

__all__ = [
    "InputError",
    "PreferencePair",
    "RunConfig",
    "__version__",
    "load_config",
    "read_pairs",
    "read_records",
    "run",
]

if TYPE_CHECKING:
    from metareward.api import load_config, read_pairs, read_records, run
    from metareward.config import RunConfig
    from metareward.errors import InputError
    from metareward.records import PreferencePair


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metareward' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
