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
6. ``train``: DPO on both, from this iteration's model with itself as reference → the iteration's
   ``model`` folder (``layout.IterationLayout.model``).

Every stage alike: hash its settings (+ the previous stage's hash), skip it if done with that hash (done
with another hash: refused, not recomputed), else run it, write its declared artifacts
(``Stage.artifacts``, names of ``layout.ARTIFACTS``) atomically, mark it done, read them back. Generation
goes through chunk logs (``stages.chunks.ChunkedPasses``): a rerun loses at most one chunk. The engine is
built lazily and freed before training (generation and DPO never hold the model twice).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.config import IterationConfig, RunConfig, dump_config, settings_hash
from metareward.engines.base import Engine
from metareward.engines.memory import PeakMemory, release_freed_memory
from metareward.errors import InputError
from metareward.layout import ARTIFACT_RECORDS, RunLayout
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
from metareward.runlock import run_lock
from metareward.stages import actor, judge, meta_judge, pairs, reward_judges
from metareward.stages.chunks import ChunkedPasses
from metareward.store import IterationStore
from metareward.summary import format_summary, iteration_summary
from metareward.training.space import training_writes

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
    meta_judgments: list[MetaJudgment] = field(default_factory=list)  # empty when the meta-judge does not run
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
    """What a stage's ``run`` produced: ``artifacts`` (artifact name → records: exactly the stage's
    ``Stage.artifacts``, written atomically in that order before the stage is marked done), its manifest
    ``count`` (default: every record written) and ``extra`` manifest fields."""

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
    * ``artifacts``: the names (keys of ``layout.ARTIFACTS``) of the files it writes, in writing order;
      its ``Output`` holds records for exactly these;
    * ``load(it)``: read its results back into ``it`` (after a run, and when it was already done); by
      default each artifact into the ``Iteration`` field of the same name (``load_artifacts``);
    * ``applies(it)``: whether this iteration runs it at all. A stage that does not apply still adds its
      hash to the chain, so the stages after it keep their hashes whether it applies or not.
    """

    name: str
    settings: Callable[[Iteration], tuple[Any, ...]]
    run: Callable[[Iteration, ChunkedPasses], Output]
    artifacts: tuple[str, ...] = ()
    load: Callable[[Iteration], None] | None = None
    applies: Callable[[Iteration], bool] = _always

    def load_into(self, it: Iteration) -> None:
        """Read this stage's results into ``it`` (its ``load``, or ``load_artifacts``)."""
        if self.load is not None:
            self.load(it)
        else:
            load_artifacts(it, self.artifacts)


def load_artifacts(it: Iteration, names: Sequence[str]) -> None:
    """Each artifact of ``names`` read from the iteration's folder into the ``Iteration`` field of that name."""
    for name in names:
        setattr(it, name, read_jsonl(it.store.layout.artifact(name), ARTIFACT_RECORDS[name]))


def _load_nothing(it: Iteration) -> None:
    """The prompts are the loop's input: already in ``it``."""


def _run_prompts(it: Iteration, passes: ChunkedPasses) -> Output:
    return Output({"prompts": it.prompts})


def _run_actor(it: Iteration, passes: ChunkedPasses) -> Output:
    responses = actor.run(it.prompts, it.cfg.actor, it.seed, it.index, passes)
    return Output({"responses": responses},
                  extra={"generated_tokens": passes.generated_tokens, "samples": len(it.prompts) * it.cfg.actor.k})


def _run_judge(it: Iteration, passes: ChunkedPasses) -> Output:
    judgments = judge.run(it.prompts_by_id(), it.responses, it.cfg.judge, it.seed, it.index, passes,
                          it.runner.function_judge())
    return Output({"judgments": judgments}, extra={"generated_tokens": passes.generated_tokens,
                                                   "invalid": dict(reward_judges.invalid_reasons(judgments))})


def _judge_settings(it: Iteration) -> tuple[Any, ...]:
    # The paper's self-judge hashes without the judge-kind fields, as it did before they existed, so
    # that run directories made then still resume.
    settings = dataclasses.asdict(it.cfg.judge)
    if it.cfg.judge.is_self():
        for name in ("kind", "model", "engine"):
            settings.pop(name)
    return (settings,)


def _run_meta_judge(it: Iteration, passes: ChunkedPasses) -> Output:
    metas = meta_judge.run(it.prompts, it.responses, it.judgments, it.cfg.meta_judge, it.seed, it.index, passes)
    return Output({"meta_judgments": metas}, extra={"generated_tokens": passes.generated_tokens})


def _run_pairs(it: Iteration, passes: ChunkedPasses) -> Output:
    actor_pairs, actor_skips = pairs.build_actor_pairs(
        it.prompts, it.responses, it.judgments, it.plan, it.seed, it.index
    )
    judge_pairs: list[PreferencePair] = []
    judge_skips: Counter = Counter()
    weights = None
    if it.train_judge:
        judge_pairs, judge_skips, weights = pairs.build_judge_pairs(
            it.prompts_by_id(), it.responses_by_id(), {j.id: j for j in it.judgments}, it.meta_judgments, it.plan,
            it.cfg.meta_judge, it.cfg.judge.template, it.seed, it.index,
        )
    return Output(
        {"actor_pairs": actor_pairs, "judge_pairs": judge_pairs},
        extra={
            "actor_pairs": len(actor_pairs), "judge_pairs": len(judge_pairs),
            "actor_skipped": dict(actor_skips), "judge_skipped": dict(judge_skips),
            "positional_weights": list(weights) if weights else None,
        },
    )


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
    with training_writes("DPO", it.model_in, it.cfg.training, len(train_set), it.store.layout):  # disk checks
        metrics = runner.train(it.model_in, train_set, it.store)
    release_freed_memory()  # the trained model is gone: its heap is the next engine's to fault in afresh
    return Output(count=len(train_set),
                  extra={"trained": True, "model_out": str(it.store.layout.model), "metrics": metrics})


def _load_train(it: Iteration) -> None:
    it.model_out = it.store.manifest["stages"]["train"]["model_out"]


STAGES: tuple[Stage, ...] = (
    Stage("prompts", lambda it: ([p.id for p in it.prompts], [p.text for p in it.prompts]), _run_prompts,
          ("prompts",), load=_load_nothing),
    Stage("actor", lambda it: (it.cfg.actor, it.model_in, it.seed), _run_actor, ("responses",)),
    Stage("judge", _judge_settings, _run_judge, ("judgments",)),
    Stage("meta_judge", lambda it: (it.cfg.meta_judge, it.train_judge), _run_meta_judge, ("meta_judgments",),
          applies=lambda it: it.train_judge),
    Stage("pairs", lambda it: (dataclasses.asdict(it.plan),), _run_pairs, ("actor_pairs", "judge_pairs")),
    Stage("train", _train_settings, _run_train, load=_load_train),
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
        self.layout = RunLayout(self.run_dir)
        self.echo = echo
        if engine_factory is None:
            from metareward.engines import make_engine

            engine_factory = lambda path: make_engine(cfg.engine, path, log_dir=self.run_dir)  # noqa: E731
        self.engine_factory = engine_factory
        self._engine: Engine | None = None
        self._engine_model: str | None = None
        self._function_judge: reward_judges.FunctionJudge | None = None

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
        if self.cfg.judge.kind == "model":
            check_model_name(self.cfg.judge.model or "")
        self._function_judge = reward_judges.function_judge(self.cfg.judge.kind, self.cfg.prompts)
        if self.cfg.sft is not None:
            self.cfg.sft.validate("sft")
        return pool

    def function_judge(self) -> reward_judges.FunctionJudge | None:
        """The judge of a function kind (``verifier``, ``python:``), loaded by ``preflight``."""
        if self._function_judge is None:
            self._function_judge = reward_judges.function_judge(self.cfg.judge.kind, self.cfg.prompts)
        return self._function_judge

    def run(self) -> list[dict[str, Any]]:
        """Run or resume every iteration, holding the run directory's writer lock (``runlock``): a second
        writer stops at once. On any exception (Ctrl-C and SIGTERM included) the engine is aborted, so
        no engine process, server or Ray worker outlives the run; the chunk logs keep the finished work."""
        pool = self.preflight()
        with run_lock(self.layout, command="run"):
            try:
                return self._run(pool)
            except BaseException:
                self.abort_engine()
                raise

    def _run(self, pool: list[Prompt]) -> list[dict[str, Any]]:
        if not self.layout.config.is_file():  # else kept until a stage runs: a refused rerun leaves it as it was
            self.save_config()
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

    def save_config(self) -> None:
        """Write the resolved config (once per process): the config of the stages that run from here on."""
        if not getattr(self, "_config_saved", False):
            dump_config(self.cfg, self.layout.config)
            self._config_saved = True

    def sft_step(self, model_path: str) -> str:
        """Optional step 0: SFT on EFT data (docs/method.md §1.1); its output is iteration 1's model."""
        from metareward.training.sft import run_sft

        store = IterationStore(self.layout.iteration(0))
        sft = self.cfg.sft
        assert sft is not None
        key = settings_hash(sft, model_path)
        if not store.stage_done("sft", key):
            self.save_config()
            self.echo("[iter 0] sft: supervised fine-tuning on EFT data")
            with Timer() as t, training_writes("SFT", model_path, sft, None, store.layout):
                if self.cfg.training.launcher:  # same multi-process launcher as DPO (accelerate launch ...)
                    from metareward.training.launch import launch_training

                    metrics = launch_training(self.cfg.training.launcher, "sft", self.run_dir, None, model_path)
                else:
                    metrics = run_sft(
                        model_path, sft.data, str(store.layout.model), sft, work_dir=str(store.layout.train_work("sft")),
                        threads=self.cfg.engine.threads,
                    )
            store.mark_done("sft", key, metrics.get("examples", 0), t.seconds, metrics=metrics)
        return str(store.layout.model)

    def engine(self, model_path: str) -> Engine:
        if self._engine is None or self._engine_model != model_path:
            self.close_engine()
            self.echo(f"loading {self.cfg.engine.name} engine on {model_path}")
            self._engine = self.engine_factory(model_path)
            self._engine_model = model_path
        return self._engine

    def stage_engine(self, stage: str, it: Iteration) -> Engine:
        """The engine a stage generates with: the iteration's model, except the judge stage of
        ``judge.kind: model``, which runs the judge model (on ``judge.engine`` when given)."""
        j = self.cfg.judge
        if stage != "judge" or j.kind != "model":
            return self.engine(it.model_in)
        path = resolve_model(j.model or "")
        if j.engine is None:
            return self.engine(path)
        key = f"{path} ({j.engine.name} judge engine)"
        if self._engine is None or self._engine_model != key:
            from metareward.engines import make_engine

            self.close_engine()
            self.echo(f"loading {j.engine.name} judge engine on {path}")
            self._engine = make_engine(j.engine, path, log_dir=self.run_dir)
            self._engine_model = key
        return self._engine

    def abort_engine(self) -> None:
        """End the engine at once (``Engine.abort``), abandoning its call in flight; never raises, so the
        error that led here is the one reported."""
        engine, self._engine, self._engine_model = self._engine, None, None
        if engine is not None:
            try:
                engine.abort()
            except Exception as e:  # noqa: BLE001 - reported, the original error wins
                log.warning("ending the %s engine failed: %s", self.cfg.engine.name, e)

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
        store = IterationStore(self.layout.iteration(i))
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
            stage.load_into(it)
        work = store.layout.work
        if work.is_dir() and not any(work.iterdir()):
            shutil.rmtree(work, ignore_errors=True)

        summary = iteration_summary(
            store, it.responses, it.judgments, it.meta_judgments, it.actor_pairs, it.judge_pairs, cfg.actor.k
        )
        skipped = cfg.meta_judge_skip_reason(i)
        if skipped is not None:  # why there are no judge pairs, named where readers look
            summary["meta_judge_skipped"] = skipped
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
        self.save_config()
        passes = ChunkedPasses(
            engine=lambda: self.stage_engine(stage.name, it),
            log_path=lambda name: store.layout.chunk_log(name, key),
            chunk_size=self.cfg.engine.chunk_size,
            label=lambda name: f"[iter {it.index}] {PASS_LABELS.get(name, name)}",
        )
        with Timer() as t, PeakMemory() as memory:
            out = stage.run(it, passes)
            if set(out.artifacts) != set(stage.artifacts):
                raise RuntimeError(f"stage {stage.name} produced {sorted(out.artifacts)}, declared {list(stage.artifacts)}")
            written = sum(write_jsonl_atomic(store.layout.artifact(name), out.artifacts[name]) for name in stage.artifacts)
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
            model_path, train_set, store.layout.model, self.cfg.training, store.layout.train_work("dpo"),
            threads=self.cfg.engine.threads,
        )



class Timer:
    """Wall-clock seconds of a ``with`` block (``seconds``, set on exit): each stage's manifest entry."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
