"""The run loop: iterations of actor → judge → meta-judge → pairs → DPO, resumable at any point.

The loop knows about files and order; the stages (``metareward.stages``) know about prompts and scores.
For each iteration ``i`` (1-based):

1. ``prompts``: the next ``iterations[i].prompts`` prompts of the pool, shuffled once with the run seed
   and drawn without replacement across iterations (spec §1.3, default "disjoint").
2. ``actor``: K responses per prompt, deduplicated.
3. ``judge``: N judgments per response (+ a scoring pass in ``constrained`` mode).
4. ``meta_judge`` (meta-rewarding mode, iterations with ``train_judge``): both orders of every pair of
   distinct judgments of each prompt's max-variance response (+ a verdict pass in ``constrained`` mode).
5. ``pairs``: actor pairs (rho tiers) and judge pairs (positional weights, battle matrix, Elo).
6. ``train``: DPO on both, from this iteration's model with itself as reference → ``iter_i/model``.

Each stage records its settings hash (its own settings + its inputs' hashes) in the manifest when done.
A rerun skips done stages, resumes a half-done generation stage from its chunk log, and refuses to
reuse a finished stage whose settings changed. The engine is built lazily, only if a stage needs it,
and freed before training so generation and DPO never hold the model twice.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metareward.config import RunConfig, dump_config, settings_hash
from metareward.engines.base import ChoiceOutput, Engine, GenerationOutput
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
from metareward.store import IterationStore, Timer, run_chunked
from metareward.summary import format_summary, iteration_summary

log = logging.getLogger("metareward")

EngineFactory = Callable[[str], Engine]


def _encode(out: GenerationOutput | ChoiceOutput) -> dict[str, Any]:
    return dataclasses.asdict(out)


class Runner:
    """Runs (or resumes) every iteration of ``cfg``. ``engine_factory(model_path)`` builds the engine;
    by default the configured one (tests pass a fake)."""

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
        """Optional step 0: SFT on EFT data (spec §1.1); its output is iteration 1's model."""
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

    # ------------------------------------------------------------------ one iteration

    def run_iteration(self, i: int, prompts: Sequence[Prompt], model_path: str) -> tuple[dict[str, Any], str]:
        cfg = self.cfg
        store = IterationStore(self.run_dir, i)
        store.manifest.update({"iteration": i, "config_hash": cfg.hash(), "seed": cfg.seed, "model_in": model_path})
        store.save_manifest()
        chunk = cfg.engine.chunk_size
        seed = cfg.seed

        # 1. prompts
        key_prompts = settings_hash([p.id for p in prompts], [p.text for p in prompts])
        if not store.stage_done("prompts", key_prompts):
            n = write_jsonl_atomic(store.path("prompts.jsonl"), prompts)
            store.mark_done("prompts", key_prompts, n, 0.0)
        by_id = {p.id: p for p in prompts}

        # 2. actor
        key_actor = settings_hash(key_prompts, cfg.actor, model_path, seed)
        if not store.stage_done("actor", key_actor):
            with Timer() as t:
                reqs = actor.actor_requests(prompts, cfg.actor, seed, i)
                outs = run_chunked(
                    store.work / f"actor-{key_actor}.chunks.jsonl", reqs, self.engine(model_path).generate,
                    _encode, chunk, f"[iter {i}] actor",
                )
                responses = [
                    r for p in prompts for r in actor.responses_from_output(p, GenerationOutput(**outs[p.id]))
                ]
                n = write_jsonl_atomic(store.path("responses.jsonl"), responses)
            tokens = sum(sum(o["n_tokens"]) for o in outs.values())
            store.mark_done("actor", key_actor, n, t.seconds, generated_tokens=tokens,
                            samples=len(prompts) * cfg.actor.k)
            (store.work / f"actor-{key_actor}.chunks.jsonl").unlink(missing_ok=True)
        responses = read_jsonl(store.path("responses.jsonl"), Response)
        responses_by_id = {r.id: r for r in responses}

        # 3. judge
        key_judge = settings_hash(key_actor, cfg.judge)
        if not store.stage_done("judge", key_judge):
            with Timer() as t:
                reqs = judge.judge_requests(by_id, responses, cfg.judge, seed, i)
                log_path = store.work / f"judge-{key_judge}.chunks.jsonl"
                outs = run_chunked(log_path, reqs, self.engine(model_path).generate, _encode, chunk, f"[iter {i}] judge")
                judgments = [
                    j for r in responses for j in judge.judgments_from_output(r, GenerationOutput(**outs[r.id]), cfg.judge)
                ]
                tokens = sum(sum(o["n_tokens"]) for o in outs.values())
                if cfg.judge.scoring == "constrained":
                    score_log = store.work / f"judge_score-{key_judge}.chunks.jsonl"
                    score_reqs = judge.score_requests(by_id, responses_by_id, judgments, cfg.judge)
                    scores = run_chunked(
                        score_log, score_reqs, self.engine(model_path).choice_probs, _encode, chunk,
                        f"[iter {i}] judge score",
                    )
                    judgments = [
                        judge.apply_score(j, scores[j.id]["probs"], responses_by_id[j.response_id].text)
                        for j in judgments
                    ]
                    score_log.unlink(missing_ok=True)
                n = write_jsonl_atomic(store.path("judgments.jsonl"), judgments)
            store.mark_done("judge", key_judge, n, t.seconds, generated_tokens=tokens)
            log_path.unlink(missing_ok=True)
        judgments = read_jsonl(store.path("judgments.jsonl"), Judgment)

        # 4. meta-judge
        train_judge = cfg.judge_trained(i)
        metas: list[MetaJudgment] = []
        key_meta = settings_hash(key_judge, cfg.meta_judge, train_judge)
        if train_judge:
            if not store.stage_done("meta_judge", key_meta):
                with Timer() as t:
                    battles = meta_judge.plan_battles(prompts, judgments, seed, i)
                    reqs = meta_judge.meta_requests(battles, by_id, responses_by_id, cfg.meta_judge, seed, i)
                    log_path = store.work / f"meta_judge-{key_meta}.chunks.jsonl"
                    outs = run_chunked(
                        log_path, reqs, self.engine(model_path).generate, _encode, chunk, f"[iter {i}] meta-judge"
                    )
                    metas = [meta_judge.meta_from_output(b, GenerationOutput(**outs[b.id]), cfg.meta_judge) for b in battles]
                    tokens = sum(sum(o["n_tokens"]) for o in outs.values())
                    if cfg.meta_judge.scoring == "constrained":
                        verdict_log = store.work / f"meta_verdict-{key_meta}.chunks.jsonl"
                        battle_by_id = {b.id: b for b in battles}
                        vreqs = meta_judge.verdict_requests(battle_by_id, metas, by_id, responses_by_id, cfg.meta_judge)
                        verdicts = run_chunked(
                            verdict_log, vreqs, self.engine(model_path).choice_probs, _encode, chunk,
                            f"[iter {i}] meta-judge verdict",
                        )
                        metas = [meta_judge.apply_verdict(m, verdicts[m.id]["probs"]) for m in metas]
                        verdict_log.unlink(missing_ok=True)
                    n = write_jsonl_atomic(store.path("meta_judgments.jsonl"), metas)
                store.mark_done("meta_judge", key_meta, n, t.seconds, generated_tokens=tokens)
                log_path.unlink(missing_ok=True)
            metas = read_jsonl(store.path("meta_judgments.jsonl"), MetaJudgment)

        # 5. pairs
        key_pairs = settings_hash(key_meta, dataclasses.asdict(cfg.iterations[i - 1]))
        if not store.stage_done("pairs", key_pairs):
            with Timer() as t:
                actor_pairs, actor_skips = pairs.build_actor_pairs(prompts, responses, judgments, cfg.iterations[i - 1], seed, i)
                judge_pairs: list[PreferencePair] = []
                judge_skips: Counter = Counter()
                weights = None
                if train_judge:
                    judge_pairs, judge_skips, weights = pairs.build_judge_pairs(
                        by_id, responses_by_id, {j.id: j for j in judgments}, metas, cfg.iterations[i - 1],
                        cfg.meta_judge, cfg.judge.template, seed, i,
                    )
                write_jsonl_atomic(store.path("actor_pairs.jsonl"), actor_pairs)
                write_jsonl_atomic(store.path("judge_pairs.jsonl"), judge_pairs)
            store.mark_done(
                "pairs", key_pairs, len(actor_pairs) + len(judge_pairs), t.seconds,
                actor_pairs=len(actor_pairs), judge_pairs=len(judge_pairs),
                actor_skipped=dict(actor_skips), judge_skipped=dict(judge_skips),
                positional_weights=list(weights) if weights else None,
            )
        actor_pairs = read_jsonl(store.path("actor_pairs.jsonl"), PreferencePair)
        judge_pairs = read_jsonl(store.path("judge_pairs.jsonl"), PreferencePair)

        # 6. train
        # how training is launched and checkpointed does not change its result: not part of the hash
        training_settings = dataclasses.replace(cfg.training, launcher=None, save_steps=0)
        key_train = settings_hash(key_pairs, training_settings, model_path)
        model_out = str(store.model_dir)
        if not store.stage_done("train", key_train):
            self.close_engine()
            train_set = actor_pairs + judge_pairs
            if not train_set:
                self.echo(f"[iter {i}] no preference pairs: the model is carried over untrained")
                store.mark_done("train", key_train, 0, 0.0, trained=False, model_out=model_path)
            else:
                self.echo(f"[iter {i}] DPO on {len(actor_pairs)} actor + {len(judge_pairs)} judge pairs")
                with Timer() as t:
                    metrics = self.train(model_path, train_set, store)
                store.mark_done("train", key_train, len(train_set), t.seconds, trained=True,
                                model_out=model_out, metrics=metrics)
        model_out = store.manifest["stages"]["train"]["model_out"]
        if (store.work).is_dir() and not any(store.work.iterdir()):
            shutil.rmtree(store.work, ignore_errors=True)

        summary = iteration_summary(store, responses, judgments, metas, actor_pairs, judge_pairs, cfg.actor.k)
        store.manifest["summary"] = summary
        store.manifest["model_out"] = model_out
        store.manifest["timings_s"] = {
            name: entry.get("seconds", 0.0) for name, entry in store.manifest["stages"].items()
        }
        store.save_manifest()
        self.echo(format_summary(i, summary, store.manifest["timings_s"]))
        return summary, model_out

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

