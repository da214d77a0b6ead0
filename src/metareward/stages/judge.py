"""Judge stage (docs/method.md §2.2–2.3): N judgments per response with the additive 5-point prompt.

Two scoring modes (``JudgeConfig.scoring``):

* ``free_text`` (the paper's): the score is the *last* ``Score: x`` of the judgment, fractions allowed,
  in [0, 5]; a judgment without one is invalid (``score=None``) and is excluded downstream, never
  counted as 0. The response text is untrusted: a ``Score: 5`` inside the response, even when the judge
  quotes it, does not count (see ``parsing.parse_score``).
* ``constrained``: the free-text judgment is cut before any score it wrote, ``\\nScore: `` is appended,
  and the engine returns the next-token distribution over ``0``..``5``. Score = expected value (finer,
  fewer ties); the stored text ends with the most likely digit so that judge DPO pairs train on a
  well-formed judgment. Every judgment is valid in this mode. The judge requests carry that read as a
  ``ChoiceFollowUp``: the ``hf`` engine answers it from each judgment's own cache as it generates it;
  judgments whose engine left it unanswered (other engines, or a chunk logged before) are read in a
  second pass (``judge_score``) that prefills prompt and judgment again. Either way the same numbers,
  up to the engine's arithmetic.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from metareward.config import JudgeConfig
from metareward.engines.base import (
    ChoiceFollowUp,
    ChoiceRequest,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from metareward.parsing import check_probabilities, close_open_fence, parse_score, truncate_before_score
from metareward.records import Judgment, Prompt, Response
from metareward.stages.common import Passes, constrained_answers, request_seed, user_turn
from metareward.stages.reward_judges import FunctionJudge
from metareward.templates import judge_prompt

SCORE_CHOICES = ("0", "1", "2", "3", "4", "5")
PASS = "judge"  # the sampled judgments
SCORE_PASS = "judge_score"  # constrained mode: the score digit's distribution


def run(
    prompts: Mapping[str, Prompt],
    responses: Sequence[Response],
    cfg: JudgeConfig,
    run_seed: int,
    iteration: int,
    passes: Passes,
    function_judge: FunctionJudge | None = None,
) -> list[Judgment]:
    """The judge stage: N judgments of every response (pass ``judge``), scored from their text
    (``free_text``) or from the next-token distribution after the cut judgment (``constrained``, pass
    ``judge_score``). Judgments come in response order, then judgment index.

    Dispatch by ``cfg.kind``: ``self`` and ``model`` run the paper's judge prompt through ``passes`` (the
    caller gives ``model`` an engine on the judge model); ``verifier`` and ``python:`` kinds are functions
    (``function_judge``, built by ``reward_judges.function_judge``) that write one judgment per response."""
    if not cfg.is_self() and cfg.kind != "model":
        if function_judge is None:
            raise ValueError(f"judge.kind {cfg.kind!r} needs its function judge (reward_judges.function_judge)")
        return function_judge(prompts, responses)
    outs = passes.generate(PASS, judge_requests(prompts, responses, cfg, run_seed, iteration))
    judgments = [j for r in responses for j in judgments_from_output(r, outs[r.id], cfg)]
    if cfg.scoring != "constrained":
        return judgments
    by_id = {r.id: r for r in responses}
    probs = constrained_answers(passes, SCORE_PASS, judgments,
                                lambda j: outs[j.response_id].samples[j.index].choice_probs,
                                lambda unread: score_requests(prompts, by_id, unread, cfg))
    return [apply_score(j, probs[j.id], by_id[j.response_id].text) for j in judgments]


def judge_requests(
    prompts: Mapping[str, Prompt], responses: Sequence[Response], cfg: JudgeConfig, run_seed: int, iteration: int
) -> list[GenerationRequest]:
    """One request per response, N samples each; in constrained mode each carries the score read
    (``constrained_prefix`` of the sample, then a digit) as its follow-up."""
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    return [
        GenerationRequest(
            id=r.id,
            messages=user_turn(judge_prompt(prompts[r.prompt_id].text, r.text, cfg.template)),
            sampling=sampling,
            n=cfg.n,
            seed=request_seed(run_seed, iteration, "judge", r.id),
            follow_up=ChoiceFollowUp(ScorePrefix(r.text), SCORE_CHOICES) if cfg.scoring == "constrained" else None,
        )
        for r in responses
    ]


def judgments_from_output(response: Response, out: GenerationOutput, cfg: JudgeConfig) -> list[Judgment]:
    """The N judgments of one response; scored now in free-text mode, later in constrained mode."""
    judgments = []
    for n, sample in enumerate(out.samples):
        score = parse_score(sample.text, response.text) if cfg.scoring == "free_text" else None
        judgments.append(
            Judgment(
                id=f"{response.id}/j{n}",
                response_id=response.id,
                prompt_id=response.prompt_id,
                index=n,
                text=sample.text,
                score=score,
                n_tokens=sample.n_tokens,
            )
        )
    return judgments


def constrained_prefix(judgment_text: str, response_text: str | None = None) -> str:
    """The assistant text after which the score digit is read: judgment up to its own score line
    (a ``Score:`` inside a quote of the response does not cut it short); a code fence left open by a
    judgment cut at ``max_tokens`` is closed first, so the score is asked for outside it."""
    body = close_open_fence(truncate_before_score(judgment_text, response_text))
    return f"{body}\nScore: " if body else "Score: "


@dataclass(frozen=True)
class ScorePrefix:
    """``constrained_prefix`` for the judgments of one response: the judge requests' follow-up prefix.
    A value (not a closure), so that requests compare equal and pickle to an engine in another process."""

    response_text: str

    def __call__(self, judgment_text: str) -> str:
        return constrained_prefix(judgment_text, self.response_text)


def score_requests(
    prompts: Mapping[str, Prompt], responses: Mapping[str, Response], judgments: Sequence[Judgment], cfg: JudgeConfig
) -> list[ChoiceRequest]:
    """One choice request per judgment (constrained mode)."""
    return [
        ChoiceRequest(
            id=j.id,
            messages=user_turn(judge_prompt(prompts[j.prompt_id].text, responses[j.response_id].text, cfg.template)),
            assistant_prefix=constrained_prefix(j.text, responses[j.response_id].text),
            choices=SCORE_CHOICES,
        )
        for j in judgments
    ]


def apply_score(judgment: Judgment, probs: Sequence[float], response_text: str | None = None) -> Judgment:
    """Constrained mode: score = E[digit], text ends with the most likely digit.

    Probabilities that are not a distribution over the six digits (NaN, infinite, negative, not
    summing to 1: ``parsing.check_probabilities``) make the judgment invalid (score None, text and
    probabilities not stored) with a warning, so no NaN ever reaches a record."""
    problem = check_probabilities(probs, len(SCORE_CHOICES))
    if problem is not None:
        warnings.warn(f"judgment {judgment.id}: {problem}; the judgment is invalid", RuntimeWarning, stacklevel=2)
        return dataclasses.replace(judgment, score=None, score_probs=None)
    p = np.asarray(probs, dtype=float)
    values = np.arange(len(SCORE_CHOICES), dtype=float)
    best = SCORE_CHOICES[int(p.argmax())]
    return Judgment(
        id=judgment.id,
        response_id=judgment.response_id,
        prompt_id=judgment.prompt_id,
        index=judgment.index,
        text=constrained_prefix(judgment.text, response_text) + best,
        score=float(round(float(p @ values), 6)),
        score_probs=[round(float(x), 6) for x in p],
        n_tokens=judgment.n_tokens,
    )


def valid_scores(judgments: Sequence[Judgment]) -> dict[str, list[float]]:
    """Valid scores per response id (invalid judgments excluded), in judgment order."""
    out: dict[str, list[float]] = {}
    for j in sorted(judgments, key=lambda j: (j.response_id, j.index)):
        out.setdefault(j.response_id, [])
        if j.score is not None:
            out[j.response_id].append(j.score)
    return out
