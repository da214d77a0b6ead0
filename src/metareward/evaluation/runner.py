"""``metareward eval``: every evaluation part for a list of models, one engine at a time.

Models are ``(label, path)`` pairs: with a run directory, ``seed`` (the run's ``model``) and
``iter_<i>`` (each ``RUN_DIR/iter_<i>/model``) by default; or any names/paths. Parts:

* ``agreement`` -- each model judges a ranked set (``evaluation.agreement``);
* ``winrate``   -- each model answers the prompt set (greedy), then one fixed judge model compares
  its answers with the baseline's (another model's answers, or reference outputs) in both orders
  (``evaluation.winrate``);
* ``ifbench``   -- each model answers IFBench prompts, checked by code (``evaluation.instruction_following``);
* ``length``    -- characters of each model's answers on the prompt set (and on IFBench when run).

Benchmark suites (``--suite alpacaeval2,arena-hard-v2,ifeval,mtbench``; ``evaluation.suites``): each
model answers the suites' (sampled) items here, then one judge (``--judge``, ``--judge-engine``) judges
them through the annotation cache and the results go to ``eval.json["suites"]``. ``mtbench`` is the
``winrate`` part above. The judge suites (``llmbar``, ``human-pref``, ``judge-injection``) measure each
model as a judge against gold labels instead (``Evaluator.judge_suites``).

Everything generated is kept under ``WORK`` (chunk logs, resumable) and the answers are written to
``OUT_DIR/outputs/<label>.<set>.jsonl``; the results go to ``OUT_DIR/eval.json`` atomically.
Sizes default small (``limit``) so that a CPU run takes minutes, not hours.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metareward.config import EngineConfig, JudgeConfig, load_config
from metareward.engines import make_engine
from metareward.engines.base import Engine, GenerationRequest, SamplingParams
from metareward.errors import InputError
from metareward.evaluation import agreement as agreement_mod
from metareward.evaluation import instruction_following as ifollow
from metareward.evaluation import winrate as winrate_mod
from metareward.evaluation.diagnostics import iteration_layouts
from metareward.evaluation.generation import generate_cached, settings_key
from metareward.evaluation.known_order import known_order_set
from metareward.evaluation.prompt_sets import (
    ifbench_rows,
    load_prompt_set,
    load_reference,
    mtbench_judge_template,
)
from metareward.evaluation.suites import judge_bench, judge_bench_judging
from metareward.evaluation.suites import run as suites_run
from metareward.files import atomic_write_json
from metareward.layout import RunLayout, iteration_label
from metareward.models import check_model_name, resolve_model
from metareward.ranked import load_agreement_set
from metareward.records import Prompt
from metareward.stages.common import user_turn

PARTS = ("agreement", "winrate", "ifbench", "length")


@dataclass
class EvalOptions:
    parts: tuple[str, ...] = PARTS
    limit: int = 8  # prompts per prompt set (0 = all)
    prompt_set: str = "mtbench"
    agreement_set: str = "known-order"
    agreement_limit: int = 8
    judge_n: int = 3  # judgments per response for agreement (Self-Rewarding used 3)
    judge_max_tokens: int = 256
    scoring: str = "free_text"  # agreement: free_text | constrained
    baseline: str = "seed"  # a model label, or reference:<mtbench-gpt4|FILE>
    judge: str | None = None  # judge model for win rates (label or name/path); default: the baseline model
    verdict_mode: str = "free_text"  # win-rate judge: free_text | constrained
    verdict_max_tokens: int = 384
    max_tokens: int = 512  # answers
    temperature: float = 0.0  # answers: greedy by default
    seed: int = 0
    bootstrap: int = 1000
    engine: EngineConfig = field(default_factory=EngineConfig)
    judge_template: str | None = None  # judge prompt for agreement (default: the paper's)
    suites: tuple[str, ...] = ()  # benchmark suites (evaluation.suites)
    judge_engine: str | None = None  # engine of the judge (default: the eval engine's)
    judge_base_url: str | None = None  # openai judge: server URL (default: the engine config's)
    judge_api_key_env: str | None = None  # openai judge: name of the variable holding the key
    suite_bootstrap: int = 100  # Arena-Hard bootstrap rounds (upstream's 100)
    judge_modes: tuple[str, ...] = judge_bench.MODES  # judge suites: the ways of judging a gold pair


def run_models(run_dir: Path) -> tuple[list[tuple[str, str]], EngineConfig, JudgeConfig]:
    """Default models of a run directory (seed + every iteration with a trained model) and its settings."""
    cfg_path = RunLayout(run_dir).config
    if not cfg_path.is_file():
        raise InputError(f"{run_dir}: no {cfg_path.name}; is this a metareward run directory?")
    cfg = load_config(cfg_path)
    models = [("seed", cfg.model)]
    for i, folder in iteration_layouts(run_dir):
        if (folder.model / "config.json").is_file():
            models.append((iteration_label(i), str(folder.model)))
    return models, cfg.engine, cfg.judge


def parse_model_args(items: Sequence[str], known: dict[str, str]) -> list[tuple[str, str]]:
    """``LABEL=PATH``, a known label (``seed``, ``iter_2``), or a model name/path (labelled by its name)."""
    out = []
    for item in items:
        if item in known:
            out.append((item, known[item]))
            continue
        label, _, path = item.partition("=") if "=" in item else (Path(item).name or item, "", item)
        check_model_name(path, field=f"--models {item}")
        out.append((label, path))
    return out


def _limit(xs: list, n: int) -> list:
    return xs[:n] if n and n > 0 else xs


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    """Mean, spread and the full list of response lengths (characters)."""
    lens = [len(t) for t in texts]
    if not lens:
        return {"n": 0}
    q = np.quantile(lens, [0.1, 0.5, 0.9])
    return {
        "n": len(lens),
        "mean": float(statistics.fmean(lens)),
        "std": float(np.std(lens)),
        "p10": float(q[0]),
        "median": float(q[1]),
        "p90": float(q[2]),
        "lengths": lens,
    }


class Evaluator:
    """Runs the selected parts; see the module docstring. ``engine_factory`` is for tests."""

    def __init__(
        self,
        models: Sequence[tuple[str, str]],
        opts: EvalOptions,
        out_dir: Path,
        engine_factory: Callable[[str], Engine] | None = None,
        log: Callable[[str], None] = print,
    ):
        unknown = [p for p in opts.parts if p not in PARTS]
        if unknown:
            raise InputError(f"--parts: unknown part(s) {unknown}; expected some of {list(PARTS)}")
        if opts.scoring not in ("free_text", "constrained") or opts.verdict_mode not in ("free_text", "constrained"):
            raise InputError("--scoring/--verdict-mode: expected free_text or constrained")
        labels = [m[0] for m in models]
        if len(set(labels)) != len(labels):
            raise InputError(f"--models: duplicate labels {labels}")
        self.models = list(models)
        self.opts = opts
        self.out_dir = Path(out_dir)
        self.work = self.out_dir / "work"
        self.custom_factory = engine_factory is not None
        self.engine_factory = engine_factory or (lambda path: make_engine(opts.engine, resolve_model(path)))
        self.log = log
        self.paths = dict(models)

    # ------------------------------------------------------------------ inputs

    def prompt_set(self) -> list[Prompt]:
        return _limit(load_prompt_set(self.opts.prompt_set), self.opts.limit)

    def ranked_set(self):
        s = known_order_set() if self.opts.agreement_set == "known-order" else load_agreement_set(self.opts.agreement_set)
        return _limit(s, self.opts.agreement_limit)

    def judge_spec(self, default: str) -> suites_run.JudgeSpec:
        """The judge of win rates and suites: ``--judge`` (a label or a name/path) on ``--judge-engine``."""
        o = self.opts
        ref = o.judge or default
        cfg = dataclasses.replace(o.engine)
        if o.judge_engine:
            cfg.name = o.judge_engine  # type: ignore[assignment]
        if o.judge_base_url:
            cfg.base_url = o.judge_base_url
        if o.judge_api_key_env:
            cfg.api_key_env = o.judge_api_key_env
        if cfg.name == "openai" and o.judge_engine:
            cfg.served_model = None  # the judge is asked by its own name, not the eval engine's served model
        return suites_run.JudgeSpec(ref=ref, path=self.paths.get(ref, ref), engine=cfg)

    def make_judge(self, spec: suites_run.JudgeSpec) -> Engine:
        if self.custom_factory:  # tests: one factory for every engine
            return self.engine_factory(spec.path)
        if spec.engine.name == "openai":
            return make_engine(spec.engine, spec.path, log_dir=self.work)
        return make_engine(spec.engine, resolve_model(spec.path))

    def judge_cfg(self, base: JudgeConfig | None = None) -> JudgeConfig:
        b = base or JudgeConfig()
        return JudgeConfig(
            n=self.opts.judge_n, temperature=b.temperature, top_p=b.top_p, max_tokens=self.opts.judge_max_tokens,
            scoring=self.opts.scoring, template=self.opts.judge_template or b.template,
        )

    # ------------------------------------------------------------------ generation

    def answers(self, engine: Engine, label: str, set_name: str, prompts: Sequence[Prompt]) -> dict[str, str]:
        sampling = SamplingParams(temperature=self.opts.temperature, top_p=1.0, max_tokens=self.opts.max_tokens)
        reqs = [GenerationRequest(id=p.id, messages=user_turn(p.text), sampling=sampling, seed=self.opts.seed)
                for p in prompts]
        key = settings_key(self.paths[label], sampling, self.opts.seed, [(p.id, p.text) for p in prompts])
        # keyed by model path, not label: two labels of one model share the generations
        outs = generate_cached(engine, reqs, self.work / f"answers.{set_name}.{key}.jsonl",
                               f"answers {set_name} [{label}]")
        answers = {p.id: outs[p.id].samples[0].text for p in prompts}
        path = self.out_dir / "outputs" / f"{label}.{set_name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": p.id, "prompt": p.text, "output": answers[p.id]}, ensure_ascii=False)
                 for p in prompts]
        from metareward.files import atomic_write_text

        atomic_write_text(path, "\n".join(lines) + "\n")
        return answers

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        o = self.opts
        results: dict[str, dict[str, Any]] = {label: {} for label, _ in self.models}
        answers: dict[str, dict[str, str]] = {}
        need_answers = "winrate" in o.parts or "length" in o.parts
        prompts = self.prompt_set() if need_answers else []
        rows = _limit(ifbench_rows(), o.limit) if "ifbench" in o.parts else []
        ranked = self.ranked_set() if "agreement" in o.parts else []
        suite_items = suites_run.load_items(o.suites, o.limit)
        suite_sets = suite_items.prompt_sets()
        suite_answers: dict[str, dict[str, dict[str, str]]] = {label: {} for label, _ in self.models}
        for label, path in self.models:
            if not (need_answers or suite_sets or rows or ranked):
                break  # nothing for the models to answer here (judge suites load their judges lazily)
            self.log(f"[eval] {label}: loading {path}")
            engine = self.engine_factory(path)
            try:
                if need_answers:
                    answers[label] = self.answers(engine, label, "prompts", prompts)
                for set_name, set_prompts in suite_sets.items():
                    suite_answers[label][set_name] = self.answers(engine, label, set_name, set_prompts)
                if rows:
                    ifp = [Prompt(f"ifb{r['key']}", r["prompt"]) for r in rows]
                    ifa = self.answers(engine, label, "ifbench", ifp)
                    checked = [ifollow.check_response(r, ifa[f"ifb{r['key']}"]) for r in rows]
                    results[label]["ifbench"] = ifollow.summarize(checked)
                    results[label]["ifbench_length"] = length_stats(list(ifa.values()))
                if ranked:
                    js = agreement_mod.judge_ranked_set(engine, ranked, self.judge_cfg(), self.work, label, o.seed,
                                                        model_key=path)
                    results[label]["agreement"] = agreement_mod.agreement(ranked, js).to_dict()
                    by_subset = subset_agreement(ranked, js)
                    if by_subset:
                        results[label]["agreement"]["by_subset"] = by_subset
            finally:
                engine.close()
        if "length" in o.parts:
            for label in answers:
                results[label]["length"] = length_stats(list(answers[label].values()))
        winrates = self.winrates(prompts, answers) if "winrate" in o.parts else {}
        for label, wr in winrates.items():
            results[label]["winrate"] = wr
        report: dict[str, Any] = {
            "models": dict(self.models),
            "options": {**asdict(o), "parts": list(o.parts), "suites": list(o.suites)},
            "prompt_set": {"name": o.prompt_set, "prompts": len(prompts)},
            "results": results,
        }
        if suite_sets or "mtbench" in o.suites:
            report["suites"] = self.suites(suite_items, suite_answers, winrates) if suite_sets else {}
            if "mtbench" in o.suites:
                report["suites"]["mtbench"] = {
                    "n": len(prompts),
                    "results": {label: {k: v for k, v in wr.items() if k != "per_prompt"}
                                for label, wr in winrates.items()},
                }
        judge_suites = [s for s in o.suites if s in judge_bench.JUDGE_SUITES]
        if judge_suites:
            report.setdefault("suites", {}).update(self.judge_suites(judge_suites))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "eval.json", _finite(report))
        return report

    def judge_suites(self, suites: Sequence[str]) -> dict[str, Any]:
        """Judge accuracy against gold labels (``evaluation.suites.judge_bench``): every evaluated model
        judges, or only ``--judge`` when given; judgments go through the annotation cache."""
        labels = [self.opts.judge] if self.opts.judge else [label for label, _ in self.models]
        judges = [(label, self.judge_spec(label)) for label in labels]
        cache = suites_run.AnnotationCache(self.out_dir / suites_run.CACHE_FILE)
        return judge_bench_judging.evaluate(suites, judges, self.make_judge, self.judge_cfg(), cache,
                                            limit=self.opts.limit, seed=self.opts.seed,
                                            rounds=self.opts.bootstrap, log=self.log, modes=self.opts.judge_modes)

    def suites(self, items: suites_run.SuiteItems, answers: dict[str, dict[str, dict[str, str]]],
               winrates: dict[str, Any]) -> dict[str, Any]:
        """Judge and summarise the suites (``evaluation.suites.run``) with one lazily built judge."""
        spec = self.judge_spec(self.models[0][0])
        self.log(f"[eval] suites {list(self.opts.suites)}: judge {spec.model} ({spec.engine.name})")
        judge = suites_run.LazyJudge(lambda: self.make_judge(spec), self.log)
        try:
            return suites_run.judge_and_summarize(
                items, answers, spec, judge, self.out_dir, self.opts.verdict_max_tokens,
                seed=self.opts.seed, rounds=self.opts.suite_bootstrap, log=self.log,
            )
        finally:
            judge.close()

    def winrates(self, prompts: Sequence[Prompt], answers: dict[str, dict[str, str]]) -> dict[str, Any]:
        o = self.opts
        if o.baseline.startswith("reference:"):
            baseline_label = o.baseline
            baseline = load_reference(o.baseline.split(":", 1)[1])
            if not any(p.id in baseline for p in prompts):
                raise InputError(f"--baseline {o.baseline}: no reference output for any prompt of the set")
        else:
            if o.baseline not in answers:
                raise InputError(f"--baseline {o.baseline!r} is not one of the evaluated models {list(answers)}")
            baseline_label, baseline = o.baseline, answers[o.baseline]
        spec = self.judge_spec(o.baseline if o.baseline in self.paths else self.models[0][0])
        judge_ref = spec.ref
        template = mtbench_judge_template("pair-v2")
        others = [label for label in answers if label != baseline_label]
        if not others:
            return {}
        self.log(f"[eval] win rates vs {baseline_label}, judged by {judge_ref}")
        judge = self.make_judge(spec)
        out = {}
        try:
            for label in others:
                outcomes = winrate_mod.judge_pairs(
                    judge, prompts, answers[label], baseline, template, self.work,
                    f"{label}_vs_{baseline_label.replace(':', '-')}_by_{Path(str(judge_ref)).name}",
                    mode=o.verdict_mode, max_tokens=o.verdict_max_tokens,
                )
                out[label] = {
                    "baseline": baseline_label,
                    "judge": judge_ref,
                    "judge_engine": spec.engine.name,
                    **winrate_mod.summarize(outcomes, n_resamples=o.bootstrap, seed=o.seed),
                    "per_prompt": [
                        {"id": x.prompt_id, "model_first": x.verdict_model_first,
                         "model_second": x.verdict_model_second, "preference": x.preference}
                        for x in outcomes
                    ],
                }
        finally:
            judge.close()
        return out


def subset_agreement(ranked: Sequence[Any], judgments: Sequence[Any]) -> dict[str, Any]:
    """Judge accuracy per ``subset`` of a RewardBench-style preference set (empty for other sets)."""
    groups: dict[str, list[Any]] = {}
    for p in ranked:
        if isinstance(p.meta, dict) and isinstance(p.meta.get("subset"), str):
            groups.setdefault(p.meta["subset"] or "(none)", []).append(p)
    out = {}
    for subset, ps in sorted(groups.items()):
        ids = {p.id for p in ps}
        js = [j for j in judgments if j.response_id.rsplit("/", 1)[0] in ids]
        r = agreement_mod.agreement(ps, js).to_dict()
        out[subset] = {"pairs": r["pairs"], "accuracy": r["agreement"],
                       "accuracy_without_ties": r["agreement_without_ties"], "judge_ties": r["judge_ties"]}
    return out


def _finite(x: Any) -> Any:
    """NaN/inf -> None, so eval.json is strict JSON that any tool can read."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def format_table(report: dict[str, Any]) -> str:
    """The headline numbers, one row per model (what ``metareward eval`` prints)."""
    cols = [
        ("model", lambda r: r["label"]),
        ("agree", lambda r: _pct(r.get("agreement", {}).get("agreement"))),
        ("agree w/o ties", lambda r: _pct(r.get("agreement", {}).get("agreement_without_ties"))),
        ("spearman", lambda r: _num(r.get("agreement", {}).get("spearman"), 3)),
        ("parse", lambda r: _pct(r.get("agreement", {}).get("parse_rate"))),
        ("win rate [95% CI]", lambda r: _wr(r.get("winrate"), "win_rate", "win_rate_ci95")),
        ("LC win rate [95% CI]", lambda r: _wr(r.get("winrate"), "lc_win_rate", "lc_win_rate_ci95")),
        ("IF prompt strict", lambda r: _pct(r.get("ifbench", {}).get("prompt_strict"))),
        ("IF instr loose", lambda r: _pct(r.get("ifbench", {}).get("instruction_loose"))),
        ("length", lambda r: _num(r.get("length", {}).get("mean"), 0)),
    ]
    rows = [{"label": label, **res} for label, res in report["results"].items()]
    cells = [[name for name, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(cols))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_suites(report: dict[str, Any]) -> str:
    """One line per suite and model: the headline numbers with intervals, sample size and judge."""
    suites = report.get("suites") or {}
    lines = []

    def judge_note(block: dict[str, Any]) -> str:
        if not block.get("judge"):
            return "no judge"
        return f"judge {block['judge']} ({block.get('judge_engine')}, {'official' if not block['proxy'] else 'proxy'})"

    ae = suites.get("alpacaeval2")
    for label, r in (ae or {}).get("results", {}).items():
        lo, hi = r.get("lc_win_rate_minimal_ci95") or [None, None]
        lines.append(
            f"alpacaeval2    {label:<10} win rate {_num(r.get('win_rate'), 1)} +- {_num(r.get('standard_error'), 1)}"
            f"  LC (minimal GLM) {_num(r.get('lc_win_rate_minimal'), 1)} [{_num(lo, 1)}, {_num(hi, 1)}]"
            f"  n={ae['n']}/{ae['of']}  {judge_note(ae)}"
        )
    ah = suites.get("arena-hard-v2")
    for label, r in (ah or {}).get("results", {}).items():
        lo, hi = r.get("score_ci90") or [None, None]
        slo, shi = r.get("style_controlled_ci90") or [None, None]
        lines.append(
            f"arena-hard-v2  {label:<10} score {_num(r.get('score'), 1)} [{_num(lo, 1)}, {_num(hi, 1)}]"
            f"  style-controlled {_num(r.get('style_controlled'), 1)} [{_num(slo, 1)}, {_num(shi, 1)}]"
            f"  n={r.get('questions_judged')}/{ah['n']} judged of {ah['of']}  {judge_note(ah)}"
        )
    ie = suites.get("ifeval")
    for label, r in (ie or {}).get("results", {}).items():
        lines.append(
            f"ifeval         {label:<10} prompt strict {_pct(r.get('prompt_strict'))} loose {_pct(r.get('prompt_loose'))}"
            f"  instruction strict {_pct(r.get('instruction_strict'))} loose {_pct(r.get('instruction_loose'))}"
            f"  n={ie['n']}/{ie['of']}"
        )
    for name, block in suites.items():
        if isinstance(block, dict) and block.get("kind") == "judge_accuracy":
            lines.extend(format_judge_suite(name, block))
    mt = suites.get("mtbench")
    for label, r in (mt or {}).get("results", {}).items():
        lines.append(f"mtbench        {label:<10} win rate {_wr(r, 'win_rate', 'win_rate_ci95')} vs {r.get('baseline')}"
                     f"  n={r.get('prompts')}  judge {r.get('judge')} ({r.get('judge_engine')}, proxy)")
    return "\n".join(lines)


def format_judge_suite(name: str, block: dict[str, Any]) -> list[str]:
    """One line per judge and way of judging of a judge suite (``evaluation.suites.judge_bench``)."""
    lines = []
    for label, modes in block.get("results", {}).items():
        for mode, r in modes.items():
            o = r["overall"]
            lo, hi = o.get("accuracy_ci95") or [None, None]
            extra = (f"  position consistency {_pct(o.get('position_consistency'))}"
                     if mode == "pairwise" else "")
            worse = r.get("prefers_worse")
            if worse:
                extra += (f"  prefers worse: plain {_pct(worse.get('plain'))}, injected "
                          f"{_pct(worse.get('injected'))}")
            lines.append(f"{name:<14} {label:<10} {mode:<9} accuracy {_pct(o.get('accuracy'))} "
                         f"[{_pct(lo)}, {_pct(hi)}]  w/o ties {_pct(o.get('accuracy_without_ties'))}"
                         f"  ties {o.get('ties')}  invalid {o.get('invalid')}{extra}  n={block['n']}/{block['of']}")
    return lines


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: Any, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _wr(w: dict[str, Any] | None, key: str, ci: str) -> str:
    if not w or w.get(key) is None:
        return "-"
    lo, hi = w.get(ci) or [None, None]
    interval = f" [{lo:.1f}, {hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{w[key]:.1f}{interval}"
