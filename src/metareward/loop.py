"""The run loop: iterations of actor → judge → meta-judge → pairs → DPO, resumable at any point.

The loop knows about files and order; the stages (``metareward.stages``) know about prompts and scores.
An iteration ``i`` (1-based) is the sequence ``STAGES``, each a ``Stage``:

1. ``prompts``: the next ``iterations[i].prompts`` prompts of the pool, shuffled once with the run seed
   and drawn without replacement across iterations (docs/method.md §1.3, default "disjoint").
2. ``actor``: K responses per prompt, deduplicated (``stages.actor.run``).
3. ``judge``: N judgments per response, + a scoring pass in ``constrained`` mode (``stages.judge.run``).
4. ``meta_judge`` (meta-rewarding mode, iterations with ``train_judge``): both orders of every pair of
   distinct judgments of each prompt's max-variance response, + a verdict pass in ``constrained`` mode
   (``stages.meta_judge.run``).
5. ``pairs``: actor pairs (rho tiers) and judge pairs (positional weights, battle matrix, Elo).
6. ``train``: DPO on both, from this iteration's model with itself as reference → ``iter_i/model``.

The loop does the same for every stage: hash its settings (its own settings + the previous stage's
hash), skip it if the manifest says it is done with that hash (a done stage with another hash is
refused, not recomputed), else run it, write its artifacts atomically, mark it done, and read its
artifacts back. Generation passes go through chunk logs (``store.ChunkedPasses``), so a rerun resumes a
half-done stage and loses at most one chunk. The engine is built lazily, only if a chunk must run, and
freed before training so generation and DPO never hold the model twice. Adding a stage is one more
``Stage`` in ``STAGES``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.config import IterationConfig, RunConfig, dump_config, settings_hash
from metareward.engines.base import Engine
from metareward.engines.memory import PeakMemory, release_freed_memory
from metareward.errors import InputError
from metareward.models import check_model_name, resolve_model
from metareward.pool import load_prompt_pool
from metareward.records import (
    Judgment,
    MetaJudgment,
    PreferencePair,
    Prompt,
    Response,
    read_jsonl,
    write_jsonl_atomic,
)
from metareward.stages import actor, judge, meta_judge, pairs
from metareward.store import ChunkedPasses, IterationStore, Timer
from metareward.summary import format_summary, iteration_summary

log = logging.getLogger("metareward")

EngineFactory = Callable[[str], Engine]


# ---------------------------------------------------------------------- the stage protocol


@dataclass
class Iteration:
    """One iteration's inputs and the records its stages have produced so far (what the stages share)."""

    index: int  # 1-based
    cfg: RunConfig
    store: IterationStore
    prompts: list[Prompt]
    model_in: str
    runner: Runner
    responses: list[Response] = field(default_factory=list)
    judgments: list[Judgment] = field(default_factory=list)
    metas: list[MetaJudgment] = field(default_factory=list)  # empty when the meta-judge does not run
    actor_pairs: list[PreferencePair] = field(default_factory=list)
    judge_pairs: list[PreferencePair] = field(default_factory=list)
    model_out: str = ""

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def plan(self) -> IterationConfig:
        """This iteration's entry of ``cfg.iterations``."""
        return self.cfg.iterations[self.index - 1]

    @property
    def train_judge(self) -> bool:
        return self.cfg.judge_trained(self.index)

    def prompts_by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    def responses_by_id(self) -> dict[str, Response]:
        return {r.id: r for r in self.responses}


@dataclass(frozen=True)
class Output:
    """What a stage's ``run`` produced: ``artifacts`` (file name → records; written atomically, in this
    order, before the stage is marked done), its manifest ``count`` (default: every record written) and
    ``extra`` manifest fields."""

    artifacts: dict[str, Sequence[Any]] = field(default_factory=dict)
    count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _always(it: Iteration) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One step of an iteration; ``Runner.run_iteration`` treats every stage the same way.

    * ``name``: its manifest key (and its name in timings and summaries);
    * ``settings(it)``: what its records depend on besides its inputs. Its settings hash is
      ``settings_hash(previous stage's hash, *settings)`` (the first stage: ``settings_hash(*settings)``),
      so a change upstream changes every hash after it;
    * ``run(it, passes)``: compute the records (``passes`` runs the model through chunk logs named after
      the pass and this hash) and return them as an ``Output``;
    * ``load(it)``: read its artifacts back into ``it`` (after a run, and when it was already done);
    * ``applies(it)``: whether this iteration runs it at all. A stage that does not apply still adds its
      hash to the chain, so the stages after it keep their hashes whether it applies or not.
    """

    name: str
    settings: Callable[[Iteration], tuple[Any, ...]]
    run: Callable[[Iteration, ChunkedPasses], Output]
    load: Callable[[Iteration], None]
    applies: Callable[[Iteration], bool] = _always


def _load_nothing(it: Iteration) -> None:
    """The prompts are the loop's input: already in ``it``."""


def _run_prompts(it: Iteration, passes: ChunkedPasses) -> Output:
    return Output({"prompts.jsonl": it.prompts})


def _run_actor(it: Iteration, passes: ChunkedPasses) -> Output:
    responses = actor.run(it.prompts, it.cfg.actor, it.seed, it.index, passes)
    return Output({"responses.jsonl": responses},
                  extra={"generated_tokens": passes.generated_tokens, "samples": len(it.prompts) * it.cfg.actor.k})


def _load_actor(it: Iteration) -> None:
    it.responses = read_jsonl(it.store.path("responses.jsonl"), Response)


def _run_judge(it: Iteration, passes: ChunkedPasses) -> Output:
    judgments = judge.run(it.prompts_by_id(), it.responses, it.cfg.judge, it.seed, it.index, passes)
    return Output({"judgments.jsonl": judgments}, extra={"generated_tokens": passes.generated_tokens})


def _load_judge(it: Iteration) -> None:
    it.judgments = read_jsonl(it.store.path("judgments.jsonl"), Judgment)


def _run_meta_judge(it: Iteration, passes: ChunkedPasses) -> Output:
    metas = meta_judge.run(it.prompts, it.responses, it.judgments, it.cfg.meta_judge, it.seed, it.index, passes)
    return Output({"meta_judgments.jsonl": metas}, extra={"generated_tokens": passes.generated_tokens})


def _load_meta_judge(it: Iteration) -> None:
    it.metas = read_jsonl(it.store.path("meta_judgments.jsonl"), MetaJudgment)


def _run_pairs(it: Iteration, passes: ChunkedPasses) -> Output:
    actor_pairs, actor_skips = pairs.build_actor_pairs(
        it.prompts, it.responses, it.judgments, it.plan, it.seed, it.index
    )
    judge_pairs: list[PreferencePair] = []
    judge_skips: Counter = Counter()
    weights = None
    if it.train_judge:
        judge_pairs, judge_skips, weights = pairs.build_judge_pairs(
            it.prompts_by_id(), it.responses_by_id(), {j.id: j for j in it.judgments}, it.metas, it.plan,
            it.cfg.meta_judge, it.cfg.judge.template, it.seed, it.index,
        )
    return Output(
        {"actor_pairs.jsonl": actor_pairs, "judge_pairs.jsonl": judge_pairs},
        extra={
            "actor_pairs": len(actor_pairs), "judge_pairs": len(judge_pairs),
            "actor_skipped": dict(actor_skips), "judge_skipped": dict(judge_skips),
            "positional_weights": list(weights) if weights else None,
        },
    )


def _load_pairs(it: Iteration) -> None:
    it.actor_pairs = read_jsonl(it.store.path("actor_pairs.jsonl"), PreferencePair)
    it.judge_pairs = read_jsonl(it.store.path("judge_pairs.jsonl"), PreferencePair)


def _train_settings(it: Iteration) -> tuple[Any, ...]:
    # How training is launched, checkpointed and logged does not change the model: launcher and save_steps
    # are hashed at fixed values, report_to not at all (it is newer than run directories that must resume).
    settings = dataclasses.asdict(dataclasses.replace(it.cfg.training, launcher=None, save_steps=0))
    settings.pop("report_to", None)
    return settings, it.model_in


def _run_train(it: Iteration, passes: ChunkedPasses) -> Output:
    runner = it.runner
    runner.close_engine()
    train_set = it.actor_pairs + it.judge_pairs
    if not train_set:
        runner.echo(f"[iter {it.index}] no preference pairs: the model is carried over untrained")
        return Output(count=0, extra={"trained": False, "model_out": it.model_in})
    runner.echo(f"[iter {it.index}] DPO on {len(it.actor_pairs)} actor + {len(it.judge_pairs)} judge pairs")
    metrics = runner.train(it.model_in, train_set, it.store)
    release_freed_memory()  # the trained model is gone: its heap is the next engine's to fault in afresh
    return Output(count=len(train_set),
                  extra={"trained": True, "model_out": str(it.store.model_dir), "metrics": metrics})


def _load_train(it: Iteration) -> None:
    it.model_out = it.store.manifest["stages"]["train"]["model_out"]


STAGES: tuple[Stage, ...] = (
    Stage("prompts", lambda it: ([p.id for p in it.prompts], [p.text for p in it.prompts]), _run_prompts,
          _load_nothing),
    Stage("actor", lambda it: (it.cfg.actor, it.model_in, it.seed), _run_actor, _load_actor),
    Stage("judge", lambda it: (it.cfg.judge,), _run_judge, _load_judge),
    Stage("meta_judge", lambda it: (it.cfg.meta_judge, it.train_judge), _run_meta_judge, _load_meta_judge,
          applies=lambda it: it.train_judge),
    Stage("pairs", lambda it: (dataclasses.asdict(it.plan),), _run_pairs, _load_pairs),
    Stage("train", _train_settings, _run_train, _load_train),
)
"""The iteration, in order. Names, settings and artifacts are what run directories hold: changing a
stage's settings tuple changes its hash, and finished runs would refuse to resume."""

PASS_LABELS = {"judge_score": "judge score", "meta_judge": "meta-judge", "meta_verdict": "meta-judge verdict"}
"""Progress-bar labels of the passes whose name is not the label."""


class Runner:
    """Runs (or resumes) every iteration of ``cfg``. ``engine_factory(model_path)`` builds the engine;
    by default the configured one (tests pass a fake)."""

    stages: Sequence[Stage] = STAGES

    def __init__(self, cfg: RunConfig, engine_factory: EngineFactory | None = None, echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.echo = echo
        if engine_factory is None:
            from metareward.engines import make_engine

            engine_factory = lambda path: make_engine(cfg.engine, path, log_dir=self.run_dir)  # noqa: E731
        self.engine_factory = engine_factory
        self._engine: Engine | None = None
        self._engine_model: str | None = None

    # ------------------------------------------------------------------ set-up

    def preflight(self) -> list[Prompt]:
        """Every check that needs no model: pool readable and large enough, model name valid."""
        pool = load_prompt_pool(self.cfg.prompts)
        needed = sum(it.prompts for it in self.cfg.iterations)
        if needed > len(pool):
            raise InputError(
                f"iterations: need {needed} prompts in total (drawn without replacement) but "
                f"{self.cfg.prompts} has {len(pool)} unique prompts"
            )
        check_model_name(self.cfg.model)
        if self.cfg.sft is not None:
            self.cfg.sft.validate("sft")
        return pool

    def run(self) -> list[dict[str, Any]]:
        pool = self.preflight()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.run_dir / "config.yaml")
        order = list(pool)
        random.Random(self.cfg.seed).shuffle(order)
        model_path = resolve_model(self.cfg.model)
        if self.cfg.sft is not None:
            model_path = self.sft_step(model_path)
        summaries = []
        start = 0
        for i, it in enumerate(self.cfg.iterations, start=1):
            prompts = order[start : start + it.prompts]
            start += it.prompts
            summary, model_path = self.run_iteration(i, prompts, model_path)
            summaries.append(summary)
        self.close_engine()
        return summaries

    def sft_step(self, model_path: str) -> str:
        """Optional step 0: SFT on EFT data (docs/method.md §1.1); its output is iteration 1's model."""
        from metareward.training.sft import run_sft

        store = IterationStore(self.run_dir, 0)
        sft = self.cfg.sft
        assert sft is not None
        key = settings_hash(sft, model_path)
        if not store.stage_done("sft", key):
            self.echo("[iter 0] sft: supervised fine-tuning on EFT data")
            with Timer() as t:
                if self.cfg.training.launcher:  # same multi-process launcher as DPO (accelerate launch ...)
                    from metareward.training.launch import launch_training

                    metrics = launch_training(self.cfg.training.launcher, "sft", self.run_dir, None, model_path)
                else:
                    metrics = run_sft(
                        model_path, sft.data, str(store.model_dir), sft, work_dir=str(store.work / "sft"),
                        threads=self.cfg.engine.threads,
                    )
            store.mark_done("sft", key, metrics.get("examples", 0), t.seconds, metrics=metrics)
        return str(store.model_dir)

    def engine(self, model_path: str) -> Engine:
        if self._engine is None or self._engine_model != model_path:
            self.close_engine()
            self.echo(f"loading {self.cfg.engine.name} engine on {model_path}")
            self._engine = self.engine_factory(model_path)
            self._engine_model = model_path
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
            self._engine_model = None
            release_freed_memory()  # nothing of the engine is left referenced: return its heap to the OS

    # ------------------------------------------------------------------ one iteration

    def run_iteration(self, i: int, prompts: Sequence[Prompt], model_path: str) -> tuple[dict[str, Any], str]:
        """Run (or resume) every stage of iteration ``i``; returns its summary and its output model."""
        cfg = self.cfg
        store = IterationStore(self.run_dir, i)
        store.manifest.update({"iteration": i, "config_hash": cfg.hash(), "seed": cfg.seed, "model_in": model_path})
        store.save_manifest()
        it = Iteration(index=i, cfg=cfg, store=store, prompts=list(prompts), model_in=model_path, runner=self)
        chain: tuple[str, ...] = ()
        for stage in self.stages:
            key = settings_hash(*chain, *stage.settings(it))
            chain = (key,)
            if not stage.applies(it):
                continue
            if not store.stage_done(stage.name, key):
                self.run_stage(stage, it, key)
            stage.load(it)
        if store.work.is_dir() and not any(store.work.iterdir()):
            shutil.rmtree(store.work, ignore_errors=True)

        summary = iteration_summary(
            store, it.responses, it.judgments, it.metas, it.actor_pairs, it.judge_pairs, cfg.actor.k
        )
        store.manifest["summary"] = summary
        store.manifest["model_out"] = it.model_out
        store.manifest["timings_s"] = {
            name: entry.get("seconds", 0.0) for name, entry in store.manifest["stages"].items()
        }
        store.manifest["peak_rss_gib"] = {  # highest resident memory of the process while each stage ran
            name: entry.get("memory", {}).get("peak_gib") for name, entry in store.manifest["stages"].items()
        }
        store.save_manifest()
        self.echo(format_summary(i, summary, store.manifest["timings_s"]))
        return summary, it.model_out

    def run_stage(self, stage: Stage, it: Iteration, key: str) -> None:
        """Run one stage, write its artifacts, mark it done; then drop its chunk logs (a kill before the
        mark leaves them, and the rerun resumes from them)."""
        store = it.store
        passes = ChunkedPasses(
            engine=lambda: self.engine(it.model_in),
            log_path=lambda name: store.work / f"{name}-{key}.chunks.jsonl",
            chunk_size=self.cfg.engine.chunk_size,
            label=lambda name: f"[iter {it.index}] {PASS_LABELS.get(name, name)}",
        )
        with Timer() as t, PeakMemory() as memory:
            out = stage.run(it, passes)
            written = sum(write_jsonl_atomic(store.path(name), records) for name, records in out.artifacts.items())
            # the engine's kept heap (keep_freed_memory) fits this stage's shapes; the next stage's prompts
            # differ in length, so it would grow a second heap beside it: hand this one back first
            release_freed_memory()
        store.mark_done(stage.name, key, written if out.count is None else out.count, t.seconds,
                        memory=memory.record(), **out.extra)
        passes.remove_logs()

    def train(self, model_path: str, train_set: list[PreferencePair], store: IterationStore) -> dict[str, Any]:
        if self.cfg.training.launcher:  # multi-GPU / multi-node: accelerate launch in a subprocess
            from metareward.training.launch import launch_training

            return launch_training(self.cfg.training.launcher, "dpo", self.run_dir, store.iteration, model_path)
        if self.cfg.training.backend == "native":
            from metareward.training.dpo_native import train_dpo_native_from_path as train_dpo
        else:
            from metareward.training.dpo import train_dpo

        return train_dpo(
            model_path, train_set, store.model_dir, self.cfg.training, store.work / "dpo", threads=self.cfg.engine.threads
        )

