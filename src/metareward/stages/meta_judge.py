"""Meta-judge stage (docs/method.md §3.1–3.4): compare pairs of one response's judgments, in both orders.

Per prompt, the response whose valid judgment scores vary most is chosen (skip when the variance is 0);
every pair of its valid, textually distinct judgments is shown to the meta-judge twice, once in each
position, with the paper's prompt (judgments include their ``Score:`` lines, as in the paper; the
meta-judge's score bias is then measurable). Verdicts:

* ``free_text``: the last ``Winner: Judg(e)ment A|B``; none, or both letters: a tie (result 0);
* ``constrained``: the free text is cut before its verdict, ``\\nWinner: Judgment `` is appended and the
  next-token probabilities of ``A`` and ``B`` decide (equal probabilities: a tie). As in the judge
  stage, that read is each request's ``ChoiceFollowUp`` (answered by the ``hf`` engine from the
  meta-judgment's own cache); what an engine leaves unanswered is read in pass ``meta_verdict``.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metareward.config import MetaJudgeConfig
from metareward.engines.base import (
    ChoiceFollowUp,
    ChoiceRequest,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from metareward.parsing import check_probabilities, close_open_fence, parse_verdict, truncate_before_verdict
from metareward.records import Judgment, MetaJudgment, Prompt, Response
from metareward.selection.elo import battle_result
from metareward.selection.judge_pairs import meta_judge_orderings, select_meta_response
from metareward.stages.common import Passes, constrained_answers, request_seed, user_turn
from metareward.templates import meta_judge_prompt

VERDICT_CHOICES = ("A", "B")
PASS = "meta_judge"  # the sampled meta-judgments
VERDICT_PASS = "meta_verdict"  # constrained mode: the verdict letter's distribution


@dataclass(frozen=True)
class Battle:
    """One planned meta-judgment: judgment ``a`` in the first position, ``b`` in the second."""

    id: str
    prompt_id: str
    response_id: str
    a: Judgment
    b: Judgment


def meta_id(a: Judgment, b: Judgment) -> str:
    return f"{a.response_id}/j{a.index}-j{b.index}"


def plan_battles(
    prompts: Sequence[Prompt], judgments: Sequence[Judgment], run_seed: int, iteration: int
) -> list[Battle]:
    """Pick each prompt's max-variance response and list its judgment orderings (deterministic)."""
    by_prompt: dict[str, list[Judgment]] = {}
    for j in judgments:
        by_prompt.setdefault(j.prompt_id, []).append(j)
    battles: list[Battle] = []
    for p in prompts:
        js = by_prompt.get(p.id, [])
        valid = [j for j in sorted(js, key=lambda j: (j.response_id, j.index)) if j.score is not None]
        scores: dict[str, list[float]] = {}
        for j in valid:
            scores.setdefault(j.response_id, []).append(j.score)  # type: ignore[arg-type]
        rng = random.Random(request_seed(run_seed, iteration, "meta_select", p.id))
        chosen = select_meta_response(scores, rng)
        if chosen is None:
            continue
        candidates = [j for j in valid if j.response_id == chosen]
        for ia, ib in meta_judge_orderings([j.text for j in candidates]):
            a, b = candidates[ia], candidates[ib]
            battles.append(Battle(id=meta_id(a, b), prompt_id=p.id, response_id=chosen, a=a, b=b))
    return battles


def run(
    prompts: Sequence[Prompt],
    responses: Sequence[Response],
    judgments: Sequence[Judgment],
    cfg: MetaJudgeConfig,
    run_seed: int,
    iteration: int,
    passes: Passes,
) -> list[MetaJudgment]:
    """The meta-judge stage: plan the battles (``plan_battles``), sample one meta-judgment of each
    (pass ``meta_judge``) and read its verdict from the text (``free_text``) or from the next-token
    distribution after the cut meta-judgment (``constrained``, pass ``meta_verdict``). In battle order."""
    battles = plan_battles(prompts, judgments, run_seed, iteration)
    by_prompt = {p.id: p for p in prompts}
    by_response = {r.id: r for r in responses}
    outs = passes.generate(PASS, meta_requests(battles, by_prompt, by_response, cfg, run_seed, iteration))
    metas = [meta_from_output(b, outs[b.id], cfg) for b in battles]
    if cfg.scoring != "constrained":
        return metas
    by_battle = {b.id: b for b in battles}
    probs = constrained_answers(passes, VERDICT_PASS, metas, lambda m: outs[m.id].samples[0].choice_probs,
                                lambda unread: verdict_requests(by_battle, unread, by_prompt, by_response, cfg))
    return [apply_verdict(m, probs[m.id]) for m in metas]


def _prompt_text(battle: Battle, prompts: Mapping[str, Prompt], responses: Mapping[str, Response], cfg) -> str:
    return meta_judge_prompt(
        prompts[battle.prompt_id].text, responses[battle.response_id].text, battle.a.text, battle.b.text, cfg.template
    )


def meta_requests(
    battles: Sequence[Battle],
    prompts: Mapping[str, Prompt],
    responses: Mapping[str, Response],
    cfg: MetaJudgeConfig,
    run_seed: int,
    iteration: int,
) -> list[GenerationRequest]:
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    return [
        GenerationRequest(
            id=b.id,
            messages=user_turn(_prompt_text(b, prompts, responses, cfg)),
            sampling=sampling,
            n=1,
            seed=request_seed(run_seed, iteration, "meta_judge", b.id),
            follow_up=ChoiceFollowUp(verdict_prefix, VERDICT_CHOICES) if cfg.scoring == "constrained" else None,
        )
        for b in battles
    ]


def meta_from_output(battle: Battle, out: GenerationOutput, cfg: MetaJudgeConfig) -> MetaJudgment:
    text = out.samples[0].text
    verdict = parse_verdict(text) if cfg.scoring == "free_text" else None
    return MetaJudgment(
        id=battle.id,
        prompt_id=battle.prompt_id,
        response_id=battle.response_id,
        judgment_a=battle.a.id,
        judgment_b=battle.b.id,
        text=text,
        verdict=verdict,
        result=battle_result(verdict),
    )


def verdict_prefix(text: str) -> str:
    body = close_open_fence(truncate_before_verdict(text))
    return f"{body}\nWinner: Judgment " if body else "Winner: Judgment "


def verdict_requests(
    battles: Mapping[str, Battle],
    metas: Sequence[MetaJudgment],
    prompts: Mapping[str, Prompt],
    responses: Mapping[str, Response],
    cfg: MetaJudgeConfig,
) -> list[ChoiceRequest]:
    return [
        ChoiceRequest(
            id=m.id,
            messages=user_turn(_prompt_text(battles[m.id], prompts, responses, cfg)),
            assistant_prefix=verdict_prefix(m.text),
            choices=VERDICT_CHOICES,
        )
        for m in metas
    ]


def apply_verdict(meta: MetaJudgment, probs: Sequence[float]) -> MetaJudgment:
    """Constrained mode: the more probable letter wins (equal: a tie). Probabilities that are not a
    distribution over A/B (``parsing.check_probabilities``) make the meta-judgment invalid -- no
    verdict, result 0 like a parse error, probabilities not stored -- with a warning."""
    problem = check_probabilities(probs, len(VERDICT_CHOICES))
    if problem is not None:
        warnings.warn(f"meta-judgment {meta.id}: {problem}; the meta-judgment is invalid", RuntimeWarning,
                      stacklevel=2)
        return dataclasses.replace(meta, verdict=None, result=battle_result(None), verdict_probs=None)
    p_a, p_b = float(probs[0]), float(probs[1])
    verdict = "A" if p_a > p_b else "B" if p_b > p_a else None
    return MetaJudgment(
        id=meta.id,
        prompt_id=meta.prompt_id,
        response_id=meta.response_id,
        judgment_a=meta.judgment_a,
        judgment_b=meta.judgment_b,
        text=verdict_prefix(meta.text) + (verdict or ""),
        verdict=verdict,
        result=battle_result(verdict),
        verdict_probs=[round(p_a, 6), round(p_b, 6)],
    )
