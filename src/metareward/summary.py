"""The end-of-iteration summary: what happened, in numbers, printed and kept in the manifest.

Counts and rates a user checks before trusting an iteration: how many responses survived dedup, how
many judgments parsed, the score distribution (mean and a histogram with one bin per point), how many
actor and judge pairs were built (and why every other prompt yielded none, by reason), chosen vs
rejected lengths, and the meta-judge's first-position win rate (its positional bias, docs/method.md
§5.6). A meta-judge whose decisive verdicts all name one position is named as such
(``meta_judge_position_only``): the positional weights then give those wins zero weight, so its
verdicts cannot produce a judge pair (docs/judging.md, "Skip reasons"). Also how many responses
contain text aimed at the judge (``evaluation.judge_addressed``; the drift alarm watches its rise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metareward.drift import summary_alarms
from metareward.evaluation.judge_addressed import addressed_count
from metareward.records import Judgment, MetaJudgment, PreferencePair, Response
from metareward.store import IterationStore


def score_histogram(scores: Sequence[float]) -> dict[str, int]:
    """Counts per score bin [0,0.5), [0.5,1.5), ..., [4.5,5]: one bin per integer point."""
    bins = {str(k): 0 for k in range(6)}
    for s in scores:
        bins[str(int(np.clip(np.floor(s + 0.5), 0, 5)))] += 1
    return bins


def _lengths(pairs: Sequence[PreferencePair]) -> dict[str, float | None]:
    if not pairs:
        return {"chosen_mean_chars": None, "rejected_mean_chars": None}
    return {
        "chosen_mean_chars": round(float(np.mean([len(p.chosen) for p in pairs])), 1),
        "rejected_mean_chars": round(float(np.mean([len(p.rejected) for p in pairs])), 1),
    }


def meta_position(metas: Sequence[MetaJudgment]) -> dict[str, Any]:
    """The meta-judge's position statistics: win rates of each position, the share of decisive
    verdicts won by the more frequent position, and whether ALL of them went to one position."""
    first = sum(1 for m in metas if m.result == 1)
    second = sum(1 for m in metas if m.result == -1)
    decisive = first + second
    return {
        "meta_first_position_win_rate": round(first / len(metas), 4) if metas else None,
        "meta_second_position_win_rate": round(second / len(metas), 4) if metas else None,
        "meta_dominant_position_share": round(max(first, second) / decisive, 4) if decisive else None,
        "meta_judge_position_only": decisive > 0 and min(first, second) == 0,
    }


def iteration_summary(
    store: IterationStore,
    responses: Sequence[Response],
    judgments: Sequence[Judgment],
    metas: Sequence[MetaJudgment],
    actor_pairs: Sequence[PreferencePair],
    judge_pairs: Sequence[PreferencePair],
    k: int,
) -> dict[str, Any]:
    stages = store.manifest["stages"]
    n_prompts = stages.get("prompts", {}).get("count", 0)
    scores = [j.score for j in judgments if j.score is not None]
    pairs_entry = stages.get("pairs", {})
    return {
        "prompts": n_prompts,
        "responses": len(responses),
        "duplicates_removed": n_prompts * k - len(responses),
        "judge_addressed": addressed_count(r.text for r in responses)[0],
        "judgments": len(judgments),
        "parse_rate": round(len(scores) / len(judgments), 4) if judgments else None,
        "score_mean": round(float(np.mean(scores)), 4) if scores else None,
        "score_histogram": score_histogram(scores),
        "actor_pairs": len(actor_pairs),
        "judge_pairs": len(judge_pairs),
        "actor_skipped": pairs_entry.get("actor_skipped", {}),
        "judge_skipped": pairs_entry.get("judge_skipped", {}),
        "judge_prompts_without_pair": sum(pairs_entry.get("judge_skipped", {}).values()),
        "actor_pair_lengths": _lengths(actor_pairs),
        "judge_pair_lengths": _lengths(judge_pairs),
        "meta_judgments": len(metas),
        **meta_position(metas),
        "positional_weights": pairs_entry.get("positional_weights"),
        "drift_alarms": summary_alarms(store.dir.parent, store.iteration),  # metareward.drift: thresholds in the text
    }


def _position_only_line(s: dict[str, Any]) -> list[str]:
    if not s.get("meta_judge_position_only"):
        return []
    side = "first" if (s.get("meta_first_position_win_rate") or 0) > 0 else "second"
    return [
        f"  meta-judge is POSITION-ONLY: the {side} position won every decisive verdict, so the positional"
        " weights cancel its wins and no judge pair can come from them"
    ]


def format_summary(iteration: int, s: dict[str, Any], timings: dict[str, float]) -> str:
    hist = " ".join(f"{k}:{v}" for k, v in s["score_histogram"].items())
    al, jl = s["actor_pair_lengths"], s["judge_pair_lengths"]
    lines = [
        f"── iteration {iteration} summary " + "─" * 40,
        f"  prompts {s['prompts']}  responses {s['responses']} (duplicates removed {s['duplicates_removed']})"
        f"  addressing the judge {s.get('judge_addressed', 0)}",
        f"  judgments {s['judgments']}  parse rate {s['parse_rate']}  score mean {s['score_mean']}",
        f"  score histogram  {hist}",
        f"  actor pairs {s['actor_pairs']}  (skipped: {s['actor_skipped'] or 'none'})",
        f"    chosen vs rejected length  {al['chosen_mean_chars']} vs {al['rejected_mean_chars']} chars",
        f"  judge pairs {s['judge_pairs']}  (skipped: {s['judge_skipped'] or 'none'})",
        f"    chosen vs rejected length  {jl['chosen_mean_chars']} vs {jl['rejected_mean_chars']} chars",
        f"  meta-judgments {s['meta_judgments']}  first-position win rate {s['meta_first_position_win_rate']}"
        f"  weights {s['positional_weights']}",
        *_position_only_line(s),
        "  time  " + "  ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
        *(f"  DRIFT ALARM  {a}" for a in s.get("drift_alarms") or []),
    ]
    return "\n".join(lines)
