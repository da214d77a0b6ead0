"""Actor stage (docs/method.md §2.1): K sampled responses per prompt, exact duplicates removed.

Assumptions: the prompt is the only (user) turn; duplicates are exact matches after stripping
whitespace, and the first copy is kept with its sample index, so ids stay stable (``p/r3`` is always the
fourth draw) and a gap in indices shows a removed duplicate. A prompt keeps whatever unique responses
remain, even fewer than K.
"""

from __future__ import annotations

from collections.abc import Sequence

from metareward.config import ActorConfig
from metareward.engines.base import GenerationOutput, GenerationRequest, SamplingParams
from metareward.records import Prompt, Response
from metareward.stages.common import Passes, request_seed, user_turn

PASS = "actor"


def actor_requests(prompts: Sequence[Prompt], cfg: ActorConfig, run_seed: int, iteration: int) -> list[GenerationRequest]:
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    return [
        GenerationRequest(
            id=p.id,
            messages=user_turn(p.text),
            sampling=sampling,
            n=cfg.k,
            seed=request_seed(run_seed, iteration, "actor", p.id),
        )
        for p in prompts
    ]


def run(prompts: Sequence[Prompt], cfg: ActorConfig, run_seed: int, iteration: int, passes: Passes) -> list[Response]:
    """The actor stage: K samples per prompt (pass ``actor``), deduplicated; responses in prompt order."""
    outs = passes.generate(PASS, actor_requests(prompts, cfg, run_seed, iteration))
    return [r for p in prompts for r in responses_from_output(p, outs[p.id])]


def responses_from_output(prompt: Prompt, out: GenerationOutput) -> list[Response]:
    """The unique, non-empty responses of one prompt's K samples, in sample order."""
    seen: set[str] = set()
    responses = []
    for k, sample in enumerate(out.samples):
        key = sample.text.strip()
        if not key or key in seen:
            continue
        seen.add(key)
        responses.append(Response(id=f"{prompt.id}/r{k}", prompt_id=prompt.id, index=k, text=sample.text,
                                  n_tokens=sample.n_tokens, finished=sample.finished))
    return responses
