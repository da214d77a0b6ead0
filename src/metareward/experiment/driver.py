"""``metareward experiment``: every arm from the seed model, then each model on the held-out prompts.

For each seed and arm: write the arm's run config, run (or resume) it with ``loop.Runner``, then evaluate
the seed model and every iteration's model (``heldout``): accuracies and their difference from the seed
model with bootstrap intervals, mean length, and the model's own judge against the verifier; IFEval for the
seed model and each arm's last model when ``ifeval_limit`` > 0. The results JSON is rewritten (atomically)
after every model, with wall times and the machine's load average, so a reader sees how contended the
CPU was and a killed experiment leaves what it had measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metareward.config import RunConfig
from metareward.engines.base import Engine
from metareward.evaluation.generation import settings_key
from metareward.experiment import heldout as ho
from metareward.experiment.settings import ExperimentConfig, arm_config, arm_name, write_arm_config
from metareward.layout import RunLayout, iteration_label
from metareward.loop import Runner
from metareward.models import resolve_model
from metareward.pool import load_prompt_pool
from metareward.records import PreferencePair, read_jsonl
from metareward.store import IterationStore
from metareward.verifiable.constraints import load_constraints

EngineMaker = Callable[[RunConfig, str], Engine]


def _default_engine(cfg: RunConfig, model_path: str) -> Engine:
    from metareward.engines import make_engine

    return make_engine(cfg.engine, model_path, log_dir=cfg.run_dir)


def cpu_seconds() -> float:
    """CPU time (user + system) this process and its finished children have used: beside the wall time,
    it shows how much of the wall time a loaded machine gave to the experiment."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


class Experiment:
    """One experiment: ``run()`` runs every arm and seed and returns (and writes) the results."""

    def __init__(self, exp: ExperimentConfig, echo: Callable[[str], None] = print,
                 make_engine: EngineMaker = _default_engine, runner_factory: Callable[[RunConfig], Runner] | None = None):
        self.exp = exp
        self.echo = echo
        self.make_engine = make_engine
        self.runner_factory = runner_factory or (lambda cfg: Runner(cfg, echo=echo))
        prompts = load_prompt_pool(exp.heldout)
        if exp.heldout_limit > 0:
            prompts = prompts[: exp.heldout_limit]
        self.heldout = ho.HeldOut(prompts, load_constraints(exp.heldout))
        self.root = Path(exp.root)
        self.results: dict[str, Any] = {}
        self.seed_table: dict[str, Any] | None = None
        self.pairs: list | None = None

    # ------------------------------------------------------------------ evaluation of one model

    def _engine(self, cfg: RunConfig, model_path: str, label: str) -> tuple[Callable[[], Engine], Callable[[], None]]:
        """An engine on ``model_path``, built on first need, and a function closing it."""
        holder: dict[str, Engine] = {}

        def engine() -> Engine:
            if "e" not in holder:
                self.echo(f"[{label}] loading {cfg.engine.name} engine on {model_path}")
                holder["e"] = self.make_engine(cfg, model_path)
            return holder["e"]

        def close() -> None:
            if "e" in holder:
                holder.pop("e").close()

        return engine, close

    def _folder(self, engine: Callable[[], Engine], label: str, part: str, settings: dict[str, Any]) -> ho.ChunkedPasses:
        """Chunk-logged passes in the evaluation folder ``label/part``, which keeps its settings."""
        folder = RunLayout(self.root).eval_dir / label / part
        ho.check_settings(folder, settings)
        return ho.passes(engine, folder, f"{label} {part}")

    def build_pairs(self, cfg: RunConfig, seed_model: str) -> None:
        """The held-out response pairs of the judge check, sampled once from the seed model."""
        if self.exp.judge_eval_limit <= 0:
            self.pairs = []
            return
        engine, close = self._engine(cfg, seed_model, "seed")
        heldout = ho.HeldOut(self.heldout.prompts[: self.exp.judge_eval_limit], self.heldout.constraints)
        try:
            run = self._folder(engine, "seed", "judge-pairs", {
                "model": seed_model, "heldout": [p.id for p in heldout.prompts], "k": self.exp.judge_pairs_k,
                "max_tokens": self.exp.answer_max_tokens})
            self.pairs = ho.judge_pairs(heldout, run, self.exp.judge_pairs_k, self.exp.answer_max_tokens)
        finally:
            close()

    def evaluate(self, cfg: RunConfig, model_path: str, label: str) -> dict[str, Any]:
        """Held-out accuracy (and its difference from the seed model) and judge accuracy of one model."""
        started = time.monotonic()
        engine, close = self._engine(cfg, model_path, label)
        try:
            run = self._folder(engine, label, "answers", {
                "model": model_path, "heldout": [p.id for p in self.heldout.prompts],
                "answer_max_tokens": self.exp.answer_max_tokens})
            answers = ho.answer(self.heldout, run, self.exp.answer_max_tokens)
            table = ho.per_prompt(self.heldout, answers)
            judged = None
            if self.pairs:
                judge_key = settings_key(dataclasses.asdict(cfg.judge))  # arms judge with their own settings
                run = self._folder(engine, label, f"judge-{judge_key}", {
                    "model": model_path, "judge": dataclasses.asdict(cfg.judge),
                    "pairs": [(a.id, b.id) for a, b in self.pairs]})
                judged = ho.judge_accuracy(self.heldout, self.pairs, cfg.judge, run)
        finally:
            close()
        out: dict[str, Any] = {"model": model_path, **ho.accuracy(table), "judge_vs_verifier": judged,
                               "per_constraint": ho.per_constraint(self.heldout, answers)}
        if self.seed_table is None:
            self.seed_table = table
        else:
            out["vs_seed"] = ho.difference(table, self.seed_table, self.exp.bootstrap)
        out["eval_seconds"] = round(time.monotonic() - started, 1)
        return out

    def ifeval(self, cfg: RunConfig, model_path: str, label: str) -> dict[str, Any] | None:
        """IFEval's fixed stratified sample of ``ifeval_limit`` prompts, greedy answers (None when off)."""
        if self.exp.ifeval_limit <= 0:
            return None
        from metareward.engines.base import GenerationRequest, SamplingParams
        from metareward.evaluation.suites import ifeval as ife
        from metareward.evaluation.suites.run import load_items
        from metareward.stages.common import user_turn

        rows = load_items(("ifeval",), self.exp.ifeval_limit).ifeval
        sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=self.exp.ifeval_max_tokens)
        requests = [GenerationRequest(id=ife.prompt_id(r), messages=user_turn(r["prompt"]), sampling=sampling)
                    for r in rows]
        engine, close = self._engine(cfg, model_path, label)
        try:
            run = self._folder(engine, label, "ifeval", {"model": model_path, "limit": self.exp.ifeval_limit,
                                                         "max_tokens": self.exp.ifeval_max_tokens})
            outs = run.generate("ifeval", requests)
        finally:
            close()
        res = ife.evaluate(rows, {k: o.samples[0].text for k, o in outs.items()})
        res.pop("per_prompt")
        return res

    # ------------------------------------------------------------------ arms

    def run(self) -> dict[str, Any]:
        exp = self.exp
        started = time.monotonic()
        self.results = {
            "experiment": {k: v for k, v in vars(exp).items() if k != "run"}, "run_config": exp.run,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "loadavg_start": [round(x, 2) for x in os.getloadavg()], "arms": {},
        }
        first = arm_config(exp, exp.arms[0], exp.seeds[0])
        seed_model = resolve_model(first.model)
        self.build_pairs(first, seed_model)
        self.results["seed_model"] = self.evaluate(first, seed_model, "seed")
        self.results["judge_check_pairs"] = len(self.pairs or [])
        if (ife := self.ifeval(first, seed_model, "seed")) is not None:
            self.results["seed_model"]["ifeval"] = ife
        self.save()
        for seed in exp.seeds:
            for arm in exp.arms:
                self.results["arms"][arm_name(arm, seed)] = self.run_arm(arm, seed)
                self.save()
        self.results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.results["wall_seconds"] = round(time.monotonic() - started, 1)
        self.results["cpu_seconds"] = cpu_seconds()
        self.save()
        return self.results

    def run_arm(self, arm: str, seed: int) -> dict[str, Any]:
        """Run one arm (resuming), then evaluate each iteration's model."""
        cfg = arm_config(self.exp, arm, seed)
        config_path = write_arm_config(self.exp, arm, seed)
        name = arm_name(arm, seed)
        self.echo(f"== {name}: {config_path}")
        t0 = time.monotonic()
        runner = self.runner_factory(cfg)
        runner.preflight()
        runner.run()
        out: dict[str, Any] = {"arm": arm, "seed": seed, "run_dir": cfg.run_dir, "config": str(config_path),
                               "run_seconds": round(time.monotonic() - t0, 1), "cpu_seconds_so_far": cpu_seconds(),
                               "loadavg_after_run": [round(x, 2) for x in os.getloadavg()], "iterations": []}
        layout = RunLayout(cfg.run_dir)
        train_constraints = load_constraints(cfg.prompts)
        for i in range(1, len(cfg.iterations) + 1):
            manifest = IterationStore(layout.iteration(i)).manifest
            label = f"{name}-{iteration_label(i)}"
            pairs = read_jsonl(layout.iteration(i).artifact("actor_pairs"), PreferencePair)
            entry = {"iteration": i, **self.evaluate(cfg, manifest["model_out"], label),
                     "actor_pairs_vs_verifier": ho.pair_agreement(pairs, train_constraints),
                     "summary": manifest.get("summary", {}), "timings_s": manifest.get("timings_s", {}),
                     "train": manifest["stages"].get("train", {}).get("metrics")}
            out["iterations"].append(entry)
            self.results["arms"][name] = out
            self.save()
        if (ife := self.ifeval(cfg, out["iterations"][-1]["model"], f"{name}-last")) is not None:
            out["iterations"][-1]["ifeval"] = ife
        return out

    def save(self) -> None:
        path = Path(self.exp.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
