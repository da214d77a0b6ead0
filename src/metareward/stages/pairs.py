"""Turning judgments and meta-judgments into DPO pairs (no model involved).

* Actor pairs (spec §2.4): per prompt, each response's reward is the mean of its valid scores
  (responses with none are left out); the rho quality tiers pick chosen = shortest of the top tier and
  rejected = longest of the bottom tier; optional limit on the chosen response's length.
* Judge pairs (spec §3.4–3.6): positional weights ω1, ω2 from the *whole iteration's* first/second-
  position wins; per selected response, the battle matrix of its judgments and Bradley–Terry scores;
  chosen = highest, rejected = lowest; dropped when their scores are equal (default) or the chosen
  judgment is longer than the iteration's limit. The DPO prompt is the filled judge prompt.

Every skipped prompt is counted by reason so the iteration summary can say why pairs are missing.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from metareward.config import IterationConfig, MetaJudgeConfig
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response
from metareward.selection.elo import battle_matrix, positional_weights
from metareward.selection.judge_pairs import select_judge_pair
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
        if j.score is not None:
            scores.setdefault(j.response_id, []).append(j.score)
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
    w1, w2 = positional_weights(m.result for m in metas)
    by_response: dict[str, list[MetaJudgment]] = {}
    for m in metas:
        by_response.setdefault(m.response_id, []).append(m)
    pairs, skipped = [], Counter()
    for response_id in sorted(by_response):
        battles_here = by_response[response_id]
        ids = sorted({m.judgment_a for m in battles_here} | {m.judgment_b for m in battles_here},
                     key=lambda i: judgments[i].index)
        index = {jid: k for k, jid in enumerate(ids)}
        B = battle_matrix(len(ids), ((index[m.judgment_a], index[m.judgment_b], m.result) for m in battles_here), w1, w2)
        js = [judgments[i] for i in ids]
        response = responses[response_id]
        rng = random.Random(request_seed(run_seed, iteration, "judge_pair", response_id))
        choice = select_judge_pair(
            [j.score for j in js],  # type: ignore[misc]
            [len(j.text) for j in js],
            B,
            rng,
            it.judge_max_chosen_length,
            require_different_scores=cfg.require_different_scores,
            l2=cfg.bt_l2,
        )
        if isinstance(choice, Skip):
            skipped[choice.reason] += 1
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
                meta={"response_id": response_id, "elo": [round(e, 4) for e in choice.elo], "w1": w1, "w2": w2},
            )
        )
    return pairs, skipped, (w1, w2)
