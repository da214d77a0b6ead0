"""Loop diagnostics: what each iteration of a run directory did, read from its artifacts alone.

For every ``RUN_DIR/iter_<i>/`` this reads the JSONL records written by ``metareward run`` (no model)
and measures the drifts the paper warns about (docs/method.md §5.6, §5.7, §7):

* **judge scores** -- the valid scores (Fig. 5 plots their density), their mean, the share of
  non-integer scores, and the **parse-failure rate** (judgments with no valid score);
* **ties** -- the share of prompts whose scored responses all got the same mean score (no actor pair
  possible, docs/method.md §2.4) and the share of same-prompt response pairs with equal mean scores;
* **lengths** (characters, the paper's unit) of all responses and judgments, and of the chosen and
  rejected sides of the actor and judge pairs;
* **judge-addressed text** -- how many responses contain text aimed at the judge (a score statement, a
  request to the grader, the rubric's wording; ``evaluation.judge_addressed``), for the gaming alarm;
* **meta-judge bias** (Table 5), over *decisive* verdicts (A or B; ties and parse errors are counted
  separately): the **first-position preference** (share won by the judgment shown first), the same on
  pairs of judgments with equal scores, and the **score bias** (on pairs whose two judgments give
  different valid scores, the share won by the higher-scoring judgment);
* **position flips** -- the two orderings of one pair of judgments are matched by their judgment ids;
  where both verdicts are decisive, a *flip* is when the winning *position* stays the same, so the
  winning *judgment* changes with the order (the verdict follows the position, not the content).

Missing files are not an error: an iteration that has not run a stage yet (or a self-rewarding run,
which has no meta-judge) simply lacks those numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.evaluation.judge_addressed import addressed_count
from metareward.layout import IterationLayout, RunLayout, iteration_label
from metareward.records import Judgment, MetaJudgment, PreferencePair, Response, read_jsonl


@dataclass
class PairStats:
    """Chosen/rejected sides of one iteration's preference pairs (lengths in characters)."""

    count: int = 0
    chosen_lengths: list[int] = field(default_factory=list)
    rejected_lengths: list[int] = field(default_factory=list)
    chosen_score_mean: float = math.nan
    rejected_score_mean: float = math.nan

    @property
    def chosen_length_mean(self) -> float:
        return _mean(self.chosen_lengths)

    @property
    def rejected_length_mean(self) -> float:
        return _mean(self.rejected_lengths)


@dataclass
class MetaJudgeBias:
    """Table 5-style statistics of one iteration's meta-judgments (see module docstring)."""

    n: int = 0  # meta-judgments
    decisive: int = 0  # verdict A or B
    first_position_wins: int = 0  # decisive verdicts for position A
    same_score_decisive: int = 0  # decisive verdicts on pairs of judgments with equal scores
    same_score_first_wins: int = 0
    different_score_decisive: int = 0  # decisive verdicts on pairs with different valid scores
    higher_score_wins: int = 0
    matched_orderings: int = 0  # unordered pairs seen in both orders
    both_decisive: int = 0  # ... whose two verdicts are both decisive
    flips: int = 0  # ... where the same position won both times (the winning judgment changed)

    @property
    def no_verdict_rate(self) -> float:
        """Share of meta-judgments without a decisive verdict (tie or parse error)."""
        return _ratio(self.n - self.decisive, self.n)

    @property
    def first_position_rate(self) -> float:
        return _ratio(self.first_position_wins, self.decisive)

    @property
    def first_position_rate_same_score(self) -> float:
        return _ratio(self.same_score_first_wins, self.same_score_decisive)

    @property
    def score_bias(self) -> float:
        return _ratio(self.higher_score_wins, self.different_score_decisive)

    @property
    def flip_rate(self) -> float:
        return _ratio(self.flips, self.both_decisive)


@dataclass
class IterationDiagnostics:
    iteration: int
    n_prompts: int = 0
    n_responses: int = 0
    n_judgments: int = 0
    scores: list[float] = field(default_factory=list)  # valid judgment scores
    parse_failures: int = 0
    scored_prompts: int = 0  # prompts with >= 2 scored responses
    tied_prompts: int = 0  # ... whose responses' mean scores are all equal
    response_pairs: int = 0  # same-prompt pairs of scored responses
    tied_response_pairs: int = 0
    response_lengths: list[int] = field(default_factory=list)
    judge_addressed: int = 0  # responses with text aimed at the judge (``evaluation.judge_addressed``)
    judgment_lengths: list[int] = field(default_factory=list)
    actor_pairs: PairStats | None = None
    judge_pairs: PairStats | None = None
    meta: MetaJudgeBias | None = None

    @property
    def parse_failure_rate(self) -> float:
        return _ratio(self.parse_failures, self.n_judgments)

    @property
    def score_mean(self) -> float:
        return _mean(self.scores)

    @property
    def non_integer_rate(self) -> float:
        return _ratio(sum(1 for s in self.scores if s != int(s)), len(self.scores))

    @property
    def prompt_tie_rate(self) -> float:
        return _ratio(self.tied_prompts, self.scored_prompts)

    @property
    def response_pair_tie_rate(self) -> float:
        return _ratio(self.tied_response_pairs, self.response_pairs)


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def iteration_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The iteration folders of a run directory (the SFT step's iteration 0 included), in order."""
    return [(i, layout.dir) for i, layout in iteration_layouts(run_dir)]


def iteration_layouts(run_dir: str | Path) -> list[tuple[int, IterationLayout]]:
    """``iteration_dirs`` as ``IterationLayout`` objects; an InputError when ``run_dir`` is not a folder."""
    run = RunLayout(run_dir)
    if not run.root.is_dir():
        raise InputError(f"{run_dir}: not a run directory (no such folder)")
    return [(i, run.iteration(i)) for i in run.iterations(with_sft=True)]


def meta_judge_bias(metas: Sequence[MetaJudgment], scores: dict[str, float | None]) -> MetaJudgeBias:
    """Table 5 statistics of meta-judgments; ``scores`` maps judgment id -> its score (None invalid)."""
    bias = MetaJudgeBias(n=len(metas))
    by_pair: dict[tuple[str, frozenset[str]], dict[tuple[str, str], str | None]] = defaultdict(dict)
    for m in metas:
        verdict = m.verdict if m.verdict in ("A", "B") else None
        by_pair[(m.response_id, frozenset((m.judgment_a, m.judgment_b)))][(m.judgment_a, m.judgment_b)] = verdict
        if verdict is None:
            continue
        bias.decisive += 1
        bias.first_position_wins += verdict == "A"
        sa, sb = scores.get(m.judgment_a), scores.get(m.judgment_b)
        if sa is None or sb is None:
            continue
        if sa == sb:
            bias.same_score_decisive += 1
            bias.same_score_first_wins += verdict == "A"
        else:
            bias.different_score_decisive += 1
            winner_score = sa if verdict == "A" else sb
            bias.higher_score_wins += winner_score == max(sa, sb)
    for orders in by_pair.values():
        if len(orders) != 2:
            continue
        bias.matched_orderings += 1
        (first, v1), (_second, v2) = sorted(orders.items())
        if v1 is None or v2 is None:
            continue
        bias.both_decisive += 1
        winner1 = first[0] if v1 == "A" else first[1]
        winner2 = _second[0] if v2 == "A" else _second[1]
        bias.flips += winner1 != winner2
    return bias


def pair_stats(pairs: Sequence[PreferencePair]) -> PairStats:
    chosen_scores = [p.chosen_score for p in pairs if p.chosen_score is not None]
    rejected_scores = [p.rejected_score for p in pairs if p.rejected_score is not None]
    return PairStats(
        count=len(pairs),
        chosen_lengths=[len(p.chosen) for p in pairs],
        rejected_lengths=[len(p.rejected) for p in pairs],
        chosen_score_mean=_mean(chosen_scores),
        rejected_score_mean=_mean(rejected_scores),
    )


def diagnose_iteration(folder: IterationLayout) -> IterationDiagnostics:
    """All diagnostics of one iteration folder (see module docstring); absent artifacts are skipped."""
    d = IterationDiagnostics(iteration=folder.iteration)
    prompts = folder.artifact("prompts")
    if prompts.is_file():
        d.n_prompts = sum(1 for line in prompts.open(encoding="utf-8") if line.strip())
    responses: list[Response] = _read(folder.artifact("responses"), Response)
    judgments: list[Judgment] = _read(folder.artifact("judgments"), Judgment)
    d.n_responses = len(responses)
    d.response_lengths = [len(r.text) for r in responses]
    d.judge_addressed = addressed_count(r.text for r in responses)[0]
    d.n_judgments = len(judgments)
    d.judgment_lengths = [len(j.text) for j in judgments]
    d.scores = [float(j.score) for j in judgments if j.score is not None]
    d.parse_failures = sum(1 for j in judgments if j.score is None)

    per_response: dict[str, list[float]] = defaultdict(list)
    prompt_of: dict[str, str] = {}
    for j in judgments:
        prompt_of[j.response_id] = j.prompt_id
        if j.score is not None:
            per_response[j.response_id].append(float(j.score))
    per_prompt: dict[str, list[float]] = defaultdict(list)
    for rid, s in per_response.items():
        per_prompt[prompt_of[rid]].append(statistics.fmean(s))
    for means in per_prompt.values():
        if len(means) < 2:
            continue
        d.scored_prompts += 1
        d.tied_prompts += max(means) == min(means)
        for i in range(len(means)):
            for k in range(i + 1, len(means)):
                d.response_pairs += 1
                d.tied_response_pairs += means[i] == means[k]

    if folder.artifact("actor_pairs").is_file():
        d.actor_pairs = pair_stats(_read(folder.artifact("actor_pairs"), PreferencePair))
    if folder.artifact("judge_pairs").is_file():
        d.judge_pairs = pair_stats(_read(folder.artifact("judge_pairs"), PreferencePair))
    if folder.artifact("meta_judgments").is_file():
        metas = _read(folder.artifact("meta_judgments"), MetaJudgment)
        d.meta = meta_judge_bias(metas, {j.id: j.score for j in judgments})
    return d


def _read(path: Path, cls: type) -> list:
    return read_jsonl(path, cls) if path.is_file() else []


def diagnose_run(run_dir: str | Path) -> list[IterationDiagnostics]:
    """Diagnostics of every iteration of ``run_dir``; an InputError if it holds no iteration folder."""
    layouts = iteration_layouts(run_dir)
    if not layouts:
        raise InputError(f"{run_dir}: no iteration folders ({iteration_label(1)}, ...); "
                         "is this a metareward run directory?")
    return [diagnose_iteration(folder) for _, folder in layouts]


def _summary_pairs(p: PairStats | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "count": p.count,
        "chosen_length_mean": p.chosen_length_mean,
        "rejected_length_mean": p.rejected_length_mean,
        "chosen_score_mean": p.chosen_score_mean,
        "rejected_score_mean": p.rejected_score_mean,
    }


def summary(d: IterationDiagnostics) -> dict[str, Any]:
    """The scalar numbers of one iteration (what the report's tables and the JSON show)."""
    meta = None
    if d.meta is not None:
        meta = {
            **asdict(d.meta),
            "no_verdict_rate": d.meta.no_verdict_rate,
            "first_position_rate": d.meta.first_position_rate,
            "first_position_rate_same_score": d.meta.first_position_rate_same_score,
            "score_bias": d.meta.score_bias,
            "flip_rate": d.meta.flip_rate,
        }
    return {
        "iteration": d.iteration,
        "prompts": d.n_prompts,
        "responses": d.n_responses,
        "judgments": d.n_judgments,
        "valid_scores": len(d.scores),
        "score_mean": d.score_mean,
        "non_integer_score_rate": d.non_integer_rate,
        "parse_failure_rate": d.parse_failure_rate,
        "prompt_tie_rate": d.prompt_tie_rate,
        "response_pair_tie_rate": d.response_pair_tie_rate,
        "response_length_mean": _mean(d.response_lengths),
        "judge_addressed_rate": _ratio(d.judge_addressed, d.n_responses),
        "judgment_length_mean": _mean(d.judgment_lengths),
        "actor_pairs": _summary_pairs(d.actor_pairs),
        "judge_pairs": _summary_pairs(d.judge_pairs),
        "meta_judge": meta,
    }
