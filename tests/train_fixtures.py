"""Shared set-up of the training tests: an iteration directory whose pairs stage is done."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metareward.config import RunConfig, dump_config
from metareward.records import PreferencePair, write_jsonl_atomic
from metareward.store import IterationStore


def iteration_with_actor_pairs(
    cfg: RunConfig, model: str, qa: Sequence[tuple[str, str, str]]
) -> tuple[IterationStore, list[PreferencePair]]:
    """Write ``cfg`` to its run directory and iteration 1 with ``model`` as its starting model, one actor
    pair per (question, chosen, rejected) of ``qa`` and no judge pairs: what a training step reads."""
    run_dir = Path(cfg.run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    store = IterationStore(run_dir, 1)
    store.manifest["model_in"] = model
    store.save_manifest()
    pairs = [
        PreferencePair(id=f"p{i}", kind="actor", prompt_id=f"q{i}", prompt=q, chosen=c, rejected=r,
                       chosen_id=f"q{i}/r0", rejected_id=f"q{i}/r1", chosen_score=4.0, rejected_score=1.0)
        for i, (q, c, r) in enumerate(qa)
    ]
    write_jsonl_atomic(store.path("actor_pairs.jsonl"), pairs)
    write_jsonl_atomic(store.path("judge_pairs.jsonl"), [])
    return store, pairs
