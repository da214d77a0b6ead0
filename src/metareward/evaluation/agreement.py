"""Judge agreement with a ranking (docs/method.md §5.5, paper Table 7): does the model judge like a human?

The model under test judges every response of a ranked set exactly as the training judge stage does
(``metareward.stages.judge``: the paper's LLM-as-a-Judge prompt, N sampled judgments per response,
``free_text`` or ``constrained`` scoring); a response's score is the mean of its valid judgment scores.
The scores are then compared with the ranking by ``evaluation.stats``: pairwise agreement, agreement
without judge ties, Spearman per prompt averaged, and the parse rate (valid judgments / all).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareward.config import JudgeConfig
from metareward.engines.base import Engine
from metareward.evaluation.generation import settings_key
from metareward.evaluation.stats import PairCounts, mean_defined, pair_counts, spearman
from metareward.ranked import RankedPrompt
from metareward.records import Judgment, Prompt, Response
from metareward.stages import judge
from metareward.stages.chunks import ChunkedPasses

# the passes' chunk logs (``agreement.<key>.<name>.jsonl`` under the eval work folder) and progress labels
_LOG_NAMES = {judge.PASS: "judge", judge.SCORE_PASS: "score"}
_LABELS = {judge.PASS: "judge agreement", judge.SCORE_PASS: "judge scores"}


@dataclass
class AgreementResult:
    prompts: int
    responses: int
    judgments: int
    valid_judgments: int
    counts: PairCounts
    spearman: float
    spearman_prompts: int  # prompts where Spearman is defined
    by_kind: dict[str, float]  # known-order set: mean score per kind of response

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "responses": self.responses,
            "judgments": self.judgments,
            "parse_rate": self.valid_judgments / self.judgments if self.judgments else float("nan"),
            "pairs": self.counts.pairs,
            "agreement": self.counts.agreement,
            "agreement_without_ties": self.counts.agreement_without_ties,
            "judge_ties": self.counts.judge_ties,
            "unscored_pairs": self.counts.unscored,
            "spearman": self.spearman,
            "spearman_prompts": self.spearman_prompts,
            "mean_score_by_kind": self.by_kind,
        }


def as_records(ranked: Sequence[RankedPrompt]) -> tuple[dict[str, Prompt], list[Response]]:
    """The ranked set as stage records (response ``<prompt id>/r<k>`` is the k-th listed response)."""
    prompts = {p.id: Prompt(p.id, p.prompt) for p in ranked}
    responses = [
        Response(id=f"{p.id}/r{k}", prompt_id=p.id, index=k, text=r.text)
        for p in ranked
        for k, r in enumerate(p.responses)
    ]
    return prompts, responses


def judge_ranked_set(
    engine: Engine,
    ranked: Sequence[RankedPrompt],
    cfg: JudgeConfig,
    work: Path,
    label: str,
    seed: int = 0,
    model_key: str | None = None,
) -> list[Judgment]:
    """N judgments of every response, scored as in training by ``stages.judge.run`` (resumable under
    ``work``, in chunks of 16 generation and 32 choice requests).

    ``model_key`` (the model's path) names the work logs; it defaults to ``label``.
    """
    prompts, responses = as_records(ranked)
    key = settings_key(model_key or label, cfg, seed, [(p.id, p.prompt, [r.text for r in p.responses]) for p in ranked])
    passes = ChunkedPasses(
        lambda: engine,
        lambda name: work / f"agreement.{key}.{_LOG_NAMES[name]}.jsonl",
        chunk_size=16,
        label=lambda name: f"{_LABELS[name]} [{label}]",
        choice_chunk_size=32,
    )
    return judge.run(prompts, responses, cfg, seed, 0, passes)


def agreement(ranked: Sequence[RankedPrompt], judgments: Sequence[Judgment]) -> AgreementResult:
    """Compare the judgments' mean scores with the ranking (see ``evaluation.stats``)."""
    scores: dict[str, list[float]] = {}
    for j in judgments:
        scores.setdefault(j.response_id, [])
        if j.score is not None:
            scores[j.response_id].append(j.score)
    counts = PairCounts()
    rhos = []
    by_kind: dict[str, list[float]] = {}
    for p in ranked:
        mean = [
            statistics.fmean(scores[f"{p.id}/r{k}"]) if scores.get(f"{p.id}/r{k}") else None
            for k in range(len(p.responses))
        ]
        ranks = [r.rank for r in p.responses]
        counts += pair_counts(mean, ranks)
        rhos.append(spearman(mean, ranks))
        for r, m in zip(p.responses, mean):
            if r.kind and m is not None:
                by_kind.setdefault(r.kind, []).append(m)
    rho, n_rho = mean_defined(rhos)
    return AgreementResult(
        prompts=len(ranked),
        responses=sum(len(p.responses) for p in ranked),
        judgments=len(judgments),
        valid_judgments=sum(1 for j in judgments if j.score is not None),
        counts=counts,
        spearman=rho,
        spearman_prompts=n_rho,
        by_kind={k: statistics.fmean(v) for k, v in by_kind.items()},
    )
