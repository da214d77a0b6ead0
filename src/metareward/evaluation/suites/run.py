"""Running the suites for a list of models with one judge (``metareward eval --suite``).

Flow: ``SuiteRunner.items()`` fixes each suite's (sampled) items; the caller has every model answer them
(``Evaluator.answers``: resumable generation logs); ``SuiteRunner.judge_and_summarize`` judges the
answers through the annotation cache (``OUT/annotations.jsonl``) and returns the ``suites`` block of
``eval.json`` (layout in ``docs/evaluation.md``, "Benchmark suites"). The judge engine is only built
when some judgment is not cached, so a finished rerun loads no judge at all.

Every block names its judge and whether it is the benchmark's official one; any other judge is a
**proxy**, and its numbers are not comparable with leaderboard or paper values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.config import EngineConfig
from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest
from metareward.errors import InputError
from metareward.evaluation.suites import SUITES, data
from metareward.evaluation.suites import alpacaeval as ae
from metareward.evaluation.suites import arena_hard as ah
from metareward.evaluation.suites import ifeval as ife
from metareward.evaluation.suites.annotation_cache import AnnotationCache
from metareward.records import Prompt

OFFICIAL_ARENA_JUDGES = ("gpt-4.1", "gemini-2.5")  # arena-hard-auto config/arena-hard-v2.0.yaml
CACHE_FILE = "annotations.jsonl"


@dataclass(frozen=True)
class JudgeSpec:
    """Which model judges, on which engine. ``ref``: what the user gave (a model label or name/path)."""

    ref: str
    path: str
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def model(self) -> str:
        """The model name the judge is asked as (the served name for ``openai``)."""
        return (self.engine.served_model or self.path) if self.engine.name == "openai" else self.path

    @property
    def id(self) -> str:
        """Identity in the annotation cache: engine, model, and the server for ``openai``."""
        where = f"@{self.engine.base_url}" if self.engine.name == "openai" else ""
        return f"{self.engine.name}:{self.model}{where}"

    def official(self, names: Sequence[str]) -> bool:
        return self.engine.name == "openai" and self.model in names

    def describe(self, official_names: Sequence[str]) -> dict[str, Any]:
        official = self.official(official_names)
        return {"judge": self.model, "judge_engine": self.engine.name, "official_judge": list(official_names),
                "judge_is_official": official, "proxy": not official}


class LazyJudge(Engine):
    """Builds the judge engine on the first request (never, when every judgment is cached)."""

    name = "lazy-judge"

    def __init__(self, factory: Callable[[], Engine], log: Callable[[str], None] = print):
        self.factory = factory
        self.engine: Engine | None = None
        self.log = log

    def _get(self) -> Engine:
        if self.engine is None:
            self.log("[eval] loading the suite judge")
            self.engine = self.factory()
        return self.engine

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        yield from self._get().generate(requests)

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        yield from self._get().choice_probs(requests)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


@dataclass
class SuiteItems:
    alpaca: list[data.AlpacaItem] = field(default_factory=list)
    alpaca_total: int = 0
    arena: list[data.ArenaItem] = field(default_factory=list)
    arena_total: int = 0
    ifeval: list[dict[str, Any]] = field(default_factory=list)
    ifeval_total: int = 0

    def prompt_sets(self) -> dict[str, list[Prompt]]:
        """What the models answer, by suite (only suites with items)."""
        sets = {
            "alpacaeval2": [Prompt(it.id, it.instruction) for it in self.alpaca],
            "arena-hard-v2": [Prompt(it.id, it.prompt) for it in self.arena],
            "ifeval": [Prompt(ife.prompt_id(r), r["prompt"]) for r in self.ifeval],
        }
        return {k: v for k, v in sets.items() if v}


def parse_suites(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise InputError(f"--suite: unknown suite(s) {unknown}; expected some of {list(SUITES)}")
    return names


def load_items(suites: Sequence[str], limit: int) -> SuiteItems:
    """Each suite's items, the fixed stratified ``limit`` sample when ``limit`` > 0 (``data.stratified_sample``)."""
    out = SuiteItems()
    if "alpacaeval2" in suites:
        items = data.alpaca_items()
        out.alpaca_total = len(items)
        out.alpaca = data.stratified_sample(items, limit, lambda x: x.id, lambda x: x.dataset)
    if "arena-hard-v2" in suites:
        items_ah = data.arena_items()
        out.arena_total = len(items_ah)
        out.arena = data.stratified_sample(items_ah, limit, lambda x: x.id, lambda x: x.subcategory)
    if "ifeval" in suites:
        rows = data.ifeval_rows()
        out.ifeval_total = len(rows)
        out.ifeval = data.stratified_sample(rows, limit, ife.prompt_id, lambda r: "all")
    return out


def judge_and_summarize(
    items: SuiteItems,
    answers: dict[str, dict[str, dict[str, str]]],  # label -> suite -> item id -> answer
    judge: JudgeSpec,
    judge_engine: Engine,
    out_dir: Path,
    verdict_max_tokens: int,
    seed: int = 0,
    rounds: int = 100,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Judge (through the cache) and summarise every suite with items; the ``suites`` block of eval.json."""
    cache = AnnotationCache(Path(out_dir) / CACHE_FILE)
    block: dict[str, Any] = {"judge": {"ref": judge.ref, "model": judge.model, "engine": judge.engine.name,
                                       "cache": CACHE_FILE, "cached_judgments": len(cache)}}
    labels = list(answers)
    if items.alpaca:
        annotator = data.alpaca_annotator()
        res = {}
        for label in labels:
            a = answers[label]["alpacaeval2"]
            p_first = ae.annotate(judge_engine, judge.id, items.alpaca, a, annotator, cache, log)
            res[label] = ae.summarize(items.alpaca, a, p_first, seed=seed)
        block["alpacaeval2"] = {
            **judge.describe([annotator.official_judge]),
            "annotator": annotator.name,
            "baseline": "gpt4_1106_preview",
            "n": len(items.alpaca), "of": items.alpaca_total,
            "strata": data.strata_counts(items.alpaca, lambda x: x.dataset),
            "lc_variant": "length_controlled_minimal (not the leaderboard's length_controlled_v1)",
            "results": res,
        }
    if items.arena:
        prompts = data.arena_prompts()
        rows, dropped = {}, {}
        for label in labels:
            a = answers[label]["arena-hard-v2"]
            texts = ah.annotate(judge_engine, judge.id, items.arena, a, prompts, cache, verdict_max_tokens, log)
            rows[label], dropped[label] = ah.model_battles(label, items.arena, a, texts, prompts.verdict_patterns)
        block["arena-hard-v2"] = {
            **judge.describe(OFFICIAL_ARENA_JUDGES),
            "baselines": dict(sorted({it.category: it.baseline_model for it in items.arena}.items())),
            "verdict_weight": ah.WEIGHT,
            "judge_max_tokens": verdict_max_tokens,
            "bootstrap_rounds": rounds,
            "n": len(items.arena), "of": items.arena_total,
            "strata": data.strata_counts(items.arena, lambda x: x.subcategory),
            "results": ah.summarize(rows, dropped, len(items.arena), rounds=rounds, seed=seed),
        }
    if items.ifeval:
        block["ifeval"] = {
            "judge": None, "n": len(items.ifeval), "of": items.ifeval_total,
            "results": {label: ife.evaluate(items.ifeval, answers[label]["ifeval"]) for label in labels},
        }
    return block
