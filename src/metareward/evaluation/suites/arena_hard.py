"""Arena-Hard v2.0 with any judge: both orders, five verdict levels, BT scores and style control.

The protocol (arena-hard-auto v2.0, as packaged in ``eval_framework.tasks.arena_hard_task``):

* **Games.** Per question two judgments: game 1 with the category's baseline as Assistant A and the
  model as B, game 2 swapped. Prompt: the category's system prompt and the ``<|User Prompt|>`` template
  (read from the installed package). The judge decodes greedily.
* **Verdicts.** The last ``[[...]]`` (else ``[...]``) label of the upper-cased judgment: ``A>>B``, ``A>B``,
  ``A=B``, ``B>A``, ``B>>A`` (and the mirrored spellings upstream accepts). A strong verdict counts as
  ``weight`` = 3 battles, a slight one as 1, a tie as one battle scored 0.5. A question whose verdict
  is missing in either game is dropped.
* **Score** (v2.0's default): the mean battle score of the model against the baseline, x 100, with a
  bootstrap of 100 rounds (battles resampled with replacement, seeded) reported as the mean of the
  bootstrap means with its 5% / 95% quantiles (a 90% interval). The Bradley-Terry fit over the same
  battles (``bradley_terry``) is reported beside it; with only model-vs-baseline battles they coincide.
* **Style control** (arena-hard-auto's ``construct_style_matrices``): BT with four covariates per battle,
  A against B: answer length and the header, list and bold counts of ``utils/add_markdown_info.py``
  (fenced code removed first), each as the ratio ``(a - b) / (a + b + 1)``, then standardised over the
  battles (population std). Reported: the bootstrap median with 5% / 95% quantiles (v2.0's bounds). Our
  fit is the converged unpenalised optimum; upstream's (scikit-learn's default L2 ``C = 1``, or torch
  LBFGS for 50 steps in v2.0) stops a little short of it. Lengths are in characters (upstream counts
  tiktoken ``gpt-4o`` tokens, not installable offline; the ratio and the standardising make the unit
  matter little). v2.0 may use densities instead of counts; we follow the code we could read.

The paper used Arena-Hard v0.1 (GPT-4-0314 baseline, gpt-4-1106-preview judge, 2.5%/97.5% bounds):
its Table 2 values are not comparable with v2.0 numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metareward.engines.base import Engine, GenerationOutput, GenerationRequest, SamplingParams
from metareward.evaluation.suites import bradley_terry as bt
from metareward.evaluation.suites.annotation_cache import AnnotationCache, annotation_key
from metareward.evaluation.suites.data import ArenaItem, ArenaPrompts

WEIGHT = 3  # battles per strong verdict (arena-hard-auto's config weight)
BASELINE = "baseline"
MODEL_AS_A = {"A>>B": 1.0, "A>B": 1.0, "A=B": 0.5, "B>A": 0.0, "B>>A": 0.0,
              "A<<B": 0.0, "A<B": 0.0, "B=A": 0.5, "B<A": 1.0, "B<<A": 1.0}
STRONG = {"A>>B", "B>>A", "A<<B", "B<<A"}
STYLE_FEATURES = ("length", "header_count", "list_count", "bold_count")


def parse_verdict(text: str, patterns: Sequence[str]) -> str | None:
    """The last match of the first pattern that matches the upper-cased text, if it is a known label."""
    for pattern in patterns:
        found = [m for m in re.findall(pattern, text.upper()) if m]
        if found:
            label = found[-1].strip("\n")
            return label if label in MODEL_AS_A else None
    return None


def game_battles(label: str, model_is_a: bool, weight: int = WEIGHT) -> list[float]:
    """The model's battle scores from one game's verdict (1 win, 0.5 tie, 0 loss; strong = ``weight``)."""
    s = MODEL_AS_A[label] if model_is_a else 1.0 - MODEL_AS_A[label]
    return [s] * (weight if label in STRONG else 1)


def judge_messages(prompts: ArenaPrompts, item: ArenaItem, answer_a: str, answer_b: str) -> tuple[dict[str, str], ...]:
    system = prompts.system_prompts.get(item.category, prompts.default_system_prompt)
    user = prompts.user_template.format(QUESTION=item.prompt, ANSWER_A=answer_a, ANSWER_B=answer_b)
    return ({"role": "system", "content": system}, {"role": "user", "content": user})


def annotate(judge: Engine, judge_id: str, items: Sequence[ArenaItem], answers: dict[str, str],
             prompts: ArenaPrompts, cache: AnnotationCache, max_tokens: int,
             log: Callable[[str], None] = print) -> dict[str, str]:
    """Judgment texts by ``<uid>|g1`` (baseline as A) and ``<uid>|g2`` (model as A); cached."""
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    reqs, keys = [], []
    for it in items:
        for game, (a, b) in (("g1", (it.baseline_output, answers[it.id])), ("g2", (answers[it.id], it.baseline_output))):
            msgs = judge_messages(prompts, it, a, b)
            reqs.append(GenerationRequest(id=f"{it.id}|{game}", messages=msgs, sampling=sampling))
            template = msgs[0]["content"] + "\n\x00\n" + prompts.user_template
            keys.append(annotation_key(judge_id, template, it.prompt, a, b, {"max_tokens": max_tokens,
                                                                            "temperature": 0.0}))

    def encode(o: GenerationOutput) -> tuple[str, Any]:
        return o.id, o.samples[0].text

    return cache.annotate(reqs, keys, "arena-hard-v2", judge.generate, encode, lambda r: r.id, log)


# ------------------------------------------------------------------------------------------ style


_CODE = re.compile(r"```[^`]*```")


def markdown_counts(text: str) -> dict[str, int]:
    """Header, list and bold counts of ``add_markdown_info.py`` (fenced code removed first)."""
    t = _CODE.sub("", text)
    return {
        "header": sum(len(re.findall(rf"^#{{{k}}}\s", t, re.MULTILINE)) for k in range(1, 7)),
        "list": len(re.findall(r"^\s*\d+\.\s", t, re.MULTILINE)) + len(re.findall(r"^\s*[-*+]\s", t, re.MULTILINE)),
        "bold": len(re.findall(r"\*\*[^*\n]+\*\*", t)) + len(re.findall(r"__[^_\n]+__", t)),
    }


def style_vector(text: str) -> np.ndarray:
    """(length in characters, header count, list count, bold count) of one answer."""
    c = markdown_counts(text)
    return np.array([len(text), c["header"], c["list"], c["bold"]], dtype=float)


def style_covariates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per battle ``(a - b) / (a + b + 1)`` for each style element, each column standardised (mean 0,
    population std 1; a constant column stays 0)."""
    z = (a - b) / (a + b + 1.0)
    mean, std = z.mean(axis=0), z.std(axis=0)
    return np.where(std > 0, (z - mean) / np.where(std > 0, std, 1.0), 0.0)


# ------------------------------------------------------------------------------------------ summary


def model_battles(label: str, items: Sequence[ArenaItem], answers: dict[str, str], texts: dict[str, str],
                  patterns: Sequence[str], weight: int = WEIGHT) -> tuple[list[dict[str, Any]], int]:
    """The battles of one model (as player a) against the baseline, and the number of dropped questions."""
    rows, dropped = [], 0
    for it in items:
        g1 = parse_verdict(texts[f"{it.id}|g1"], patterns)
        g2 = parse_verdict(texts[f"{it.id}|g2"], patterns)
        if g1 is None or g2 is None:
            dropped += 1
            continue
        for game, label_, model_is_a in (("g1", g1, False), ("g2", g2, True)):
            for s in game_battles(label_, model_is_a, weight):
                rows.append({"model": label, "uid": it.id, "category": it.category, "game": game, "verdict": label_,
                             "score": s, "model_answer": answers[it.id], "baseline_answer": it.baseline_output})
    return rows, dropped


def bootstrap_mean(scores: Sequence[float], rounds: int = 100, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the bootstrap means and their 5% / 95% quantiles, x 100 (NaN when there are no battles)."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(rounds)])
    return 100.0 * float(means.mean()), 100.0 * float(np.quantile(means, 0.05)), 100.0 * float(np.quantile(means, 0.95))


def to_battles(rows: Sequence[dict[str, Any]], style: bool) -> bt.Battles:
    a = np.array([style_vector(r["model_answer"]) for r in rows]).reshape(len(rows), 4)
    b = np.array([style_vector(r["baseline_answer"]) for r in rows]).reshape(len(rows), 4)
    z = style_covariates(a, b) if style and rows else np.zeros((len(rows), 0))
    return bt.Battles([r["model"] for r in rows], [BASELINE] * len(rows), np.array([r["score"] for r in rows], float),
                      np.ones(len(rows)), z)


def summarize(rows_by_model: dict[str, list[dict[str, Any]]], dropped: dict[str, int], n_questions: int,
              rounds: int = 100, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per model: score (mean battle score, bootstrap 90%), BT and style-controlled BT, per category."""
    models = [m for m, rows in rows_by_model.items() if rows]
    players = [*models, BASELINE]
    all_rows = [r for m in models for r in rows_by_model[m]]
    out: dict[str, dict[str, Any]] = {}
    fits: dict[str, Any] = {}
    if all_rows:
        for style in (False, True):
            battles = to_battles(all_rows, style)
            boots = bt.bootstrap_scores(battles, players, BASELINE, rounds=rounds, seed=seed)
            fits[style] = (bt.fit_scores(battles, players, BASELINE), boots)
    for m, rows in rows_by_model.items():
        scores = [r["score"] for r in rows]
        mean, lo, hi = bootstrap_mean(scores, rounds, seed)
        res: dict[str, Any] = {
            "n": n_questions,
            "questions_judged": n_questions - dropped.get(m, 0),
            "questions_dropped": dropped.get(m, 0),
            "battles": len(rows),
            "score": mean,
            "score_ci90": [lo, hi],
            "verdicts": _counts({(r["uid"], r["game"]): r["verdict"] for r in rows}.values()),  # per game
            "avg_length": float(np.mean([len(r["model_answer"]) for r in rows])) if rows else math.nan,
        }
        if m in models:
            j = players.index(m)
            point, boots = fits[False]
            res["bt_score"] = point[m]
            res["bt_score_ci90"] = [float(np.quantile(boots[:, j], 0.05)), float(np.quantile(boots[:, j], 0.95))]
            point, boots = fits[True]
            res["style_controlled"] = float(np.median(boots[:, j]))
            res["style_controlled_fit"] = point[m]
            res["style_controlled_ci90"] = [float(np.quantile(boots[:, j], 0.05)),
                                            float(np.quantile(boots[:, j], 0.95))]
        by_cat: dict[str, list[float]] = {}
        for r in rows:
            by_cat.setdefault(r["category"], []).append(r["score"])
        res["by_category"] = {}
        for cat, xs in sorted(by_cat.items()):
            cm, clo, chi = bootstrap_mean(xs, rounds, seed)
            res["by_category"][cat] = {"score": cm, "score_ci90": [clo, chi], "battles": len(xs)}
        out[m] = res
    return out


def _counts(labels: Any) -> dict[str, int]:
    c: dict[str, int] = {}
    for x in labels:
        c[x] = c.get(x, 0) + 1
    return dict(sorted(c.items()))
