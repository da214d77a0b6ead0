"""What-if pair selection on a run's stored judgments: the pairs other settings would give, no model loaded.

The paper tuned rho per iteration to keep response lengths stable (docs/method.md §2.4); choosing it,
or the chosen-length limits, should not mean re-running generation. ``open_iteration`` rebuilds the
loop's ``Iteration`` of a finished (or judged) iteration from its run directory, and ``pairs_for`` runs
the loop's own pairs stage (``loop.STAGES``, i.e. ``stages.pairs.build_actor_pairs`` and
``build_judge_pairs``) with an iteration entry whose rho and length limits are replaced. At the run's
own settings that reproduces the stored pair files byte for byte (``tests/test_pairs_whatif.py``).

``write_pairs`` stores one setting's pairs for training. It keeps the run directory consistent:

* the pair files are rewritten atomically, and the manifest's ``pairs`` entry is marked done with the
  settings hash the loop computes for the new setting (so nothing is silently mixed);
* the run directory's resolved config gets the new iteration entry, so ``metareward run`` on that
  config resumes straight into DPO; a config elsewhere must be given the same values (the command
  prints them), else ``run`` refuses, naming the ``pairs`` stage;
* it refuses when the iteration has already trained (the model learnt the old pairs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareward.config import IterationConfig, RunConfig, dump_config, load_config, settings_hash
from metareward.errors import InputError
from metareward.layout import PAIR_ARTIFACTS, RunLayout
from metareward.loop import STAGES, Iteration, Output, Stage
from metareward.records import (
    Judgment,
    MetaJudgment,
    PreferencePair,
    Prompt,
    Response,
    read_jsonl,
    to_json,
    write_jsonl_atomic,
)
from metareward.store import IterationStore

_NEEDED = ("prompts", "actor", "judge")


@dataclass(frozen=True)
class PairSetting:
    """The settings of ``IterationConfig`` that pair selection reads, and nothing else."""

    rho: float
    actor_max_chosen_length: int | None
    judge_max_chosen_length: int | None

    @classmethod
    def of(cls, it: IterationConfig) -> PairSetting:
        return cls(it.rho, it.actor_max_chosen_length, it.judge_max_chosen_length)

    def apply(self, it: IterationConfig) -> IterationConfig:
        return dataclasses.replace(it, rho=self.rho, actor_max_chosen_length=self.actor_max_chosen_length,
                                   judge_max_chosen_length=self.judge_max_chosen_length)

    def label(self) -> str:
        def lim(v: int | None) -> str:
            return "-" if v is None else str(v)

        return f"rho={self.rho:g} actor_max={lim(self.actor_max_chosen_length)} judge_max={lim(self.judge_max_chosen_length)}"


def _stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def open_iteration(run_dir: str | Path, index: int, cfg: RunConfig | None = None) -> Iteration:
    """The loop's ``Iteration`` ``index`` of ``run_dir``, its records read back (no model, nothing
    written). ``cfg``: the run's resolved config (default: the one in the run directory)."""
    layout = RunLayout(run_dir)
    if cfg is None:
        if not layout.config.is_file():
            raise InputError(f"{run_dir}: not a run directory (no {layout.config.name})")
        cfg = load_config(layout.config)
    if not 1 <= index <= len(cfg.iterations):
        raise InputError(f"--iteration: {index} is not an iteration of {layout.config} (1..{len(cfg.iterations)})")
    store = IterationStore(layout.iteration(index))
    stages = store.manifest.get("stages", {})
    needed = _NEEDED + (("meta_judge",) if cfg.judge_trained(index) else ())
    missing = [s for s in needed if not stages.get(s, {}).get("done")]
    if missing:
        raise InputError(f"{store.layout.manifest}: iteration {index} has not finished {', '.join(missing)}; "
                         "pairs need its judgments (and meta-judgments)")
    prompts = read_jsonl(store.layout.artifact("prompts"), Prompt)
    it = Iteration(index=index, cfg=cfg, store=store, prompts=prompts, model_in=store.manifest.get("model_in", ""),
                   runner=None)  # type: ignore[arg-type]  # the pairs stage never reaches the runner
    it.responses = read_jsonl(store.layout.artifact("responses"), Response)
    it.judgments = read_jsonl(store.layout.artifact("judgments"), Judgment)
    if cfg.judge_trained(index):
        it.meta_judgments = read_jsonl(store.layout.artifact("meta_judgments"), MetaJudgment)
    return it


def with_setting(it: Iteration, setting: PairSetting) -> Iteration:
    """``it`` with its iteration entry's pair settings replaced (the config is copied, not changed)."""
    entries = list(it.cfg.iterations)
    entries[it.index - 1] = setting.apply(entries[it.index - 1])
    return dataclasses.replace(it, cfg=dataclasses.replace(it.cfg, iterations=entries))


def pairs_for(it: Iteration, setting: PairSetting | None = None) -> Output:
    """The loop's pairs stage run on ``it``'s records (at ``setting``, default the run's own)."""
    return _stage("pairs").run(with_setting(it, setting) if setting else it, None)  # type: ignore[arg-type]


def loop_pairs(cfg: RunConfig, index: int, prompts: Sequence[Any], responses: list[Response],
               judgments: list[Judgment], metas: list[MetaJudgment]) -> list[PreferencePair]:
    """Every pair (actor, then judge) the loop's pairs stage builds from these records."""
    it = Iteration(index=index, cfg=cfg, store=None, prompts=list(prompts), model_in="",  # type: ignore[arg-type]
                   runner=None, responses=responses, judgments=judgments, meta_judgments=metas)  # type: ignore[arg-type]
    out = pairs_for(it)
    return [p for name in PAIR_ARTIFACTS for p in out.artifacts[name]]


def stage_keys(it: Iteration) -> dict[str, str]:
    """Every stage's settings hash, chained exactly as ``loop.Runner.run_iteration`` chains them."""
    keys: dict[str, str] = {}
    chain: tuple[str, ...] = ()
    for stage in STAGES:
        key = settings_hash(*chain, *stage.settings(it))
        chain = (key,)
        keys[stage.name] = key
    return keys


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _lengths(pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    chosen = _mean([len(p.chosen) for p in pairs])
    rejected = _mean([len(p.rejected) for p in pairs])
    gap = round(chosen - rejected, 1) if chosen is not None and rejected is not None else None
    return {"pairs": len(pairs), "chosen_mean_chars": chosen, "rejected_mean_chars": rejected, "gap_chars": gap}


def summarize(setting: PairSetting, out: Output, stored: dict[str, str] | None = None) -> dict[str, Any]:
    """One row of the what-if table: per kind, pair count, mean lengths and gap, skipped prompts by
    reason; ``same_as_stored`` when the stored files' text is given."""
    row: dict[str, Any] = {"setting": dataclasses.asdict(setting)}
    for kind in ("actor", "judge"):
        row[kind] = {**_lengths(out.artifacts[f"{kind}_pairs"]), "skipped": dict(out.extra[f"{kind}_skipped"])}
    if stored is not None:
        row["same_as_stored"] = all(serialize(out.artifacts[name]) == stored[name] for name in PAIR_ARTIFACTS)
    return row


def serialize(records: Sequence[Any]) -> str:
    """The bytes ``records.write_jsonl_atomic`` writes for ``records`` (as text)."""
    return "".join(to_json(r) + "\n" for r in records)


def stored_pairs(it: Iteration) -> dict[str, str] | None:
    """The stored pair files' text, when the iteration's pairs stage is done."""
    if not it.store.manifest.get("stages", {}).get("pairs", {}).get("done"):
        return None
    return {name: it.store.layout.artifact(name).read_text(encoding="utf-8") for name in PAIR_ARTIFACTS}


def write_pairs(it: Iteration, setting: PairSetting, config_path: Path) -> dict[str, Any]:
    """Store ``setting``'s pairs as iteration ``it``'s training pairs (see the module docstring).
    The caller holds the run directory's lock."""
    store = it.store
    if store.manifest.get("stages", {}).get("train", {}).get("done"):
        raise InputError(f"{store.layout.manifest}: iteration {it.index} has already trained on its pairs; "
                         "rewriting them would leave a model trained on other pairs (use a new run_dir)")
    run = RunLayout(config_path.parent)
    later = [i for i in run.iterations() if i > it.index and run.iteration(i).manifest.is_file()]
    if later:
        raise InputError(f"{run.iteration(later[0]).manifest}: iteration {later[0]} has started from this "
                         f"iteration's model; rewriting iteration {it.index}'s pairs would not reach it")
    new = with_setting(it, setting)
    start = time.perf_counter()
    out = pairs_for(new)
    written = sum(write_jsonl_atomic(store.layout.artifact(name), out.artifacts[name]) for name in PAIR_ARTIFACTS)
    key = stage_keys(new)["pairs"]
    store.mark_done("pairs", key, written, time.perf_counter() - start, written_by="metareward pairs --write",
                    **out.extra)
    dump_config(new.cfg, config_path)
    return {"iteration": it.index, "setting": dataclasses.asdict(setting), "pairs_written": written,
            "settings_hash": key}
