"""Turning judgments and meta-judgments into DPO pairs (no model involved).

* Actor pairs (docs/method.md §2.4): per prompt, each response's reward is the mean of its valid scores
  (responses with none are left out); the rho quality tiers pick chosen = shortest of the top tier and
  rejected = longest of the bottom tier; optional limit on the chosen response's length.
* Judge pairs (docs/method.md §3.4–3.6): positional weights ω1, ω2 from the *whole iteration's* first/second-
  position wins; per selected response, the battle matrix of its judgments and Bradley–Terry scores;
  chosen = highest, rejected = lowest; dropped when the scores their texts state are equal (default)
  or the chosen judgment is longer than the iteration's limit. The DPO prompt is the filled judge
  prompt.

Every prompt without a pair is counted by reason -- including the prompts dropped before the
meta-judge -- so the iteration summary can say why pairs are missing (docs/judging.md).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from metareward.config import IterationConfig, MetaJudgeConfig
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response
from metareward.selection.elo import battle_matrix, positional_weights
from metareward.selection.judge_pairs import (
    SKIP_ELO_TIED,
    SKIP_IDENTICAL_JUDGMENTS,
    SKIP_NO_DECISIVE_VERDICT,
    SKIP_NO_META_JUDGMENTS,
    SKIP_POSITION_ONLY,
    meta_judge_orderings,
    no_meta_response_reason,
    select_judge_pair,
    select_meta_response,
)
from metareward.selection.length_control import ScoredResponse, Skip, select_actor_pair
from metareward.stages.common import request_seed
from metareward.templates import judge_prompt


def build_actor_pairs(
    prompts: Sequence[Prompt],
    responses: Sequence[Response],
    judgments: Sequence[Judgment],
    it: IterationConfig,
    run_seed: int,
    iteration: int,
) -> tuple[list[PreferencePair], Counter]:
    by_prompt: dict[str, list[Response]] = {}
    for r in responses:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    scores: dict[str, list[float]] = {}
    for j in judgments:
        if valid_score(j):  # invalid (None) and non-finite scores never enter a mean
            scores.setdefault(j.response_id, []).append(j.score)  # type: ignore[arg-type]
    pairs, skipped = [], Counter()
    for p in prompts:
        rs = {r.id: r for r in by_prompt.get(p.id, [])}
        scored = [
            ScoredResponse(id=r.id, score=float(np.mean(scores[r.id])), length=len(r.text))
            for r in rs.values()
            if scores.get(r.id)
        ]
        rng = random.Random(request_seed(run_seed, iteration, "actor_pair", p.id))
        choice = select_actor_pair(scored, it.rho, rng, it.actor_max_chosen_length)
        if isinstance(choice, Skip):
            skipped[choice.reason] += 1
            continue
        c, r = rs[choice.chosen.id], rs[choice.rejected.id]
        pairs.append(
            PreferencePair(
                id=f"actor/{p.id}",
                kind="actor",
                prompt_id=p.id,
                prompt=p.text,
                chosen=c.text,
                rejected=r.text,
                chosen_id=c.id,
                rejected_id=r.id,
                chosen_score=choice.chosen.score,
                rejected_score=choice.rejected.score,
                meta={"rho": it.rho, "n_scored": len(scored)},
            )
        )
    return pairs, skipped


def valid_score(j: Judgment) -> bool:
    """Whether the judgment has a usable score: not invalid (None) and finite."""
    return j.score is not None and math.isfinite(j.score)


def stated_score(j: Judgment) -> float | None:
    """The score the judgment's TEXT states -- what DPO trains on. In free-text mode that is ``j.score``
    (parsed from the text). In constrained mode ``j.score`` is the expected digit while the text ends
    with the most likely one, ``argmax(score_probs)`` (``stages.judge.apply_score``): two texts can state
    the same score with different expected scores. Read from the probabilities rather than re-parsed,
    because the appended line may sit inside a structure of the cut text (an unclosed code fence)."""
    if j.score_probs:
        return float(int(np.argmax(j.score_probs)))
    return j.score


def pre_meta_skip_reason(prompt_id: str, judgments: Sequence[Judgment], run_seed: int, iteration: int) -> str:
    """Why a prompt got no meta-judgments: the meta-judge stage's own selection (``select_meta_response``
    with the same seed) replayed, so every prompt without a judge pair is counted by reason."""
    valid = [j for j in sorted(judgments, key=lambda j: (j.response_id, j.index)) if valid_score(j)]
    scores: dict[str, list[float]] = {}
    for j in valid:
        scores.setdefault(j.response_id, []).append(j.score)  # type: ignore[arg-type]
    rng = random.Random(request_seed(run_seed, iteration, "meta_select", prompt_id))
    chosen = select_meta_response(scores, rng)
    if chosen is None:
        return no_meta_response_reason(scores)
    if not meta_judge_orderings([j.text for j in valid if j.response_id == chosen]):
        return SKIP_IDENTICAL_JUDGMENTS
    return SKIP_NO_META_JUDGMENTS


def tied_reason(metas: Sequence[MetaJudgment]) -> str:
    """Refine ``elo_tied``: no decisive verdict at all, or every decisive verdict for one position (the
    meta-judge followed the position, and the positional weights cancel such wins)."""
    decisive = {m.result for m in metas if m.result != 0}
    if not decisive:
        return SKIP_NO_DECISIVE_VERDICT
    if len(decisive) == 1:
        return SKIP_POSITION_ONLY
    return SKIP_ELO_TIED


def build_judge_pairs(
    prompts: Mapping[str, Prompt],
    responses: Mapping[str, Response],
    judgments: Mapping[str, Judgment],
    metas: Sequence[MetaJudgment],
    it: IterationConfig,
    cfg: MetaJudgeConfig,
    judge_template: str | None,
    run_seed: int,
    iteration: int,
) -> tuple[list[PreferencePair], Counter, tuple[float, float]]:
    """Judge pairs from the iteration's meta-judgments, and the reason for every prompt without one.

    Every prompt of ``prompts`` yields a pair or exactly one skip reason: the ones dropped before the
    meta-judge (``fewer_than_two_valid_judgments``, ``zero_variance``, ``identical_judgments``) and the
    ones dropped here (``no_decisive_verdict``, ``position_only_verdicts``, ``elo_tied``,
    ``chosen_too_long``, ``same_score``). Battles involving a judgment without a finite score are
    ignored, so no pair keeps an invalid or NaN score. The same-score rule compares the scores the two
    judgment texts state (``stated_score``), since the texts are what DPO trains on.
    """
    metas = [
        m for m in metas
        if m.judgment_a in judgments and m.judgment_b in judgments
        and valid_score(judgments[m.judgment_a]) and valid_score(judgments[m.judgment_b])
    ]
    w1, w2 = positional_weights(m.result for m in metas)
    by_response: dict[str, list[MetaJudgment]] = {}
    for m in metas:
        by_response.setdefault(m.response_id, []).append(m)
    judgments_by_prompt: dict[str, list[Judgment]] = {}
    for j in judgments.values():
        judgments_by_prompt.setdefault(j.prompt_id, []).append(j)
    pairs, skipped = [], Counter()
    meta_judged = {responses[r].prompt_id for r in by_response}
    for prompt_id in sorted(prompts):
        if prompt_id not in meta_judged:
            skipped[pre_meta_skip_reason(prompt_id, judgments_by_prompt.get(prompt_id, []), run_seed, iteration)] += 1
    for response_id in sorted(by_response):
        battles_here = by_response[response_id]
        ids = sorted({m.judgment_a for m in battles_here} | {m.judgment_b for m in battles_here},
                     key=lambda i: judgments[i].index)
        index = {jid: k for k, jid in enumerate(ids)}
        B = battle_matrix(len(ids), ((index[m.judgment_a], index[m.judgment_b], m.result) for m in battles_here), w1, w2)
        js = [judgments[i] for i in ids]
        stated = [stated_score(j) for j in js]
        response = responses[response_id]
        rng = random.Random(request_seed(run_seed, iteration, "judge_pair", response_id))
        choice = select_judge_pair(
            stated,  # type: ignore[arg-type]
            [len(j.text) for j in js],
            B,
            rng,
            it.judge_max_chosen_length,
            require_different_scores=cfg.require_different_scores,
            l2_relative=cfg.bt_l2,
        )
        if isinstance(choice, Skip):
            skipped[tied_reason(battles_here) if choice.reason == SKIP_ELO_TIED else choice.reason] += 1
            continue
        c, r = js[choice.chosen], js[choice.rejected]
        prompt = prompts[response.prompt_id]
        pairs.append(
            PreferencePair(
                id=f"judge/{prompt.id}",
                kind="judge",
                prompt_id=prompt.id,
                prompt=judge_prompt(prompt.text, response.text, judge_template),
                chosen=c.text,
                rejected=r.text,
                chosen_id=c.id,
                rejected_id=r.id,
                chosen_score=c.score,
                rejected_score=r.score,
                meta={
                    "response_id": response_id,
                    "elo": [round(e, 4) for e in choice.elo],
                    "w1": w1,
                    "w2": w2,
                    "stated_scores": [stated[choice.chosen], stated[choice.rejected]],
                },
            )
        )
    return pairs, skipped, (w1, w2)
