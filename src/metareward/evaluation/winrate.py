"""Pairwise win rate of a model against a baseline, decided by a judge model (docs/method.md §5.1-5.2).

For every prompt the judge sees both outputs twice, once with the model's output as "Assistant A" and
once as "Assistant B", with FastChat's MT-Bench pairwise prompt (``pair-v2``: explain, then ``[[A]]``,
``[[B]]`` or ``[[C]]`` for a tie). As in FastChat, a prompt is a **win** only if both orders prefer the
model, a **loss** only if both prefer the baseline, and a **tie** otherwise: position-inconsistent
verdicts, ties and unparseable verdicts all count as ties (scored 0.5). Reported:

* win rate = 100 * mean(win=1, tie=0.5, loss=0), with a percentile bootstrap 95% interval over
  prompts (``stats.bootstrap_ci``, fixed seed);
* the length-controlled win rate (``lc_winrate``, AlpacaEval 2's GLM) and its bootstrap interval;
* counts of wins/ties/losses, inconsistent prompts, verdict parse failures, and the judge's own
  first-position preference (share of decisive verdicts for "Assistant A").

Verdict parsing takes the *last* ``[[A]]``/``[[B]]``/``[[C]]`` of the judgment (FastChat takes the first
that it finds in the order A, B, C; the last is robust to a judge that first repeats the format line).
In ``constrained`` mode (small judges that never write the format) the explanation is cut before its
first ``[[``, ``"\\n\\nFinal verdict: [["`` is appended, and the verdict is the most probable of A/B/C.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metareward.engines.base import ChoiceRequest, Engine, GenerationRequest, SamplingParams
from metareward.evaluation.generation import choices_cached, generate_cached, settings_key
from metareward.evaluation.lc_winrate import lc_bootstrap_ci, length_controlled_winrate
from metareward.evaluation.stats import bootstrap_ci
from metareward.parsing import check_probabilities
from metareward.records import Prompt

VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
VERDICT_CHOICES = ("A", "B", "C")
CONSTRAINED_SUFFIX = "\n\nFinal verdict: [["


def _most_probable_verdict(probs: Sequence[float]) -> str | None:
    """The most probable of ``VERDICT_CHOICES``, or None (unparseable: a tie) when the engine gave no
    usable distribution (a NaN: no choice among the judge's most likely next tokens)."""
    if check_probabilities(probs, len(VERDICT_CHOICES)) is not None:
        return None
    return VERDICT_CHOICES[int(np.argmax(probs))]


def parse_pair_verdict(text: str) -> str | None:
    """The last ``[[A]]``/``[[B]]``/``[[C]]`` of a pairwise judgment, or None."""
    found = VERDICT_RE.findall(text)
    return found[-1] if found else None


def constrained_prefix(text: str) -> str:
    body = text.split("[[", 1)[0].rstrip()
    return body + CONSTRAINED_SUFFIX if body else CONSTRAINED_SUFFIX.lstrip()


def pair_messages(template: dict[str, str], question: str, answer_a: str, answer_b: str) -> tuple[dict[str, str], ...]:
    user = (
        template["prompt_template"]
        .replace("{question}", "\x00Q\x00")
        .replace("{answer_a}", "\x00A\x00")
        .replace("{answer_b}", "\x00B\x00")
    )
    # fill in one pass so that an answer containing "{answer_b}" is not expanded again
    parts = {"\x00Q\x00": question, "\x00A\x00": answer_a, "\x00B\x00": answer_b}
    user = re.sub("\x00[QAB]\x00", lambda m: parts[m.group(0)], user)
    return ({"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user})


@dataclass
class PromptOutcome:
    prompt_id: str
    verdict_model_first: str | None  # A/B/C/None with the model's output as Assistant A
    verdict_model_second: str | None  # ... with the model's output as Assistant B
    len_model: int
    len_baseline: int

    @property
    def outcomes(self) -> tuple[str, str]:
        """Model-perspective outcome of each order: win / loss / tie (None and C are ties)."""
        first = {"A": "win", "B": "loss"}.get(self.verdict_model_first or "", "tie")
        second = {"B": "win", "A": "loss"}.get(self.verdict_model_second or "", "tie")
        return first, second

    @property
    def preference(self) -> float:
        """1 win, 0 loss, 0.5 tie (inconsistent orders included)."""
        first, second = self.outcomes
        if first == second == "win":
            return 1.0
        if first == second == "loss":
            return 0.0
        return 0.5


def judge_pairs(
    judge: Engine,
    prompts: Sequence[Prompt],
    model_outputs: dict[str, str],
    baseline_outputs: dict[str, str],
    template: dict[str, str],
    work: Path,
    label: str,
    mode: str = "free_text",
    max_tokens: int = 512,
) -> list[PromptOutcome]:
    """Both orders of every prompt that has an output on both sides, judged greedily."""
    todo = [p for p in prompts if p.id in model_outputs and p.id in baseline_outputs]
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    reqs = []
    for p in todo:
        m, b = model_outputs[p.id], baseline_outputs[p.id]
        reqs.append(GenerationRequest(id=f"{p.id}|mb", messages=pair_messages(template, p.text, m, b), sampling=sampling))
        reqs.append(GenerationRequest(id=f"{p.id}|bm", messages=pair_messages(template, p.text, b, m), sampling=sampling))
    key = settings_key(label, template, max_tokens, [(r.id, r.messages) for r in reqs])
    outs = generate_cached(judge, reqs, work / f"winrate.{label}.{key}.judge.jsonl", f"pairwise judge [{label}]")
    verdicts = {r.id: parse_pair_verdict(outs[r.id].samples[0].text) for r in reqs}
    if mode == "constrained":
        creqs = [
            ChoiceRequest(id=r.id, messages=r.messages, choices=VERDICT_CHOICES,
                          assistant_prefix=constrained_prefix(outs[r.id].samples[0].text))
            for r in reqs
        ]
        probs = choices_cached(judge, creqs, work / f"winrate.{label}.{key}.verdict.jsonl", f"verdicts [{label}]")
        verdicts = {rid: _most_probable_verdict(o.probs) for rid, o in probs.items()}
    return [
        PromptOutcome(
            prompt_id=p.id,
            verdict_model_first=verdicts[f"{p.id}|mb"],
            verdict_model_second=verdicts[f"{p.id}|bm"],
            len_model=len(model_outputs[p.id]),
            len_baseline=len(baseline_outputs[p.id]),
        )
        for p in todo
    ]


def summarize(outcomes: Sequence[PromptOutcome], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rate, its bootstrap interval, LC win rate and the counts (see module docstring)."""
    prefs = [o.preference for o in outcomes]
    verdicts = [v for o in outcomes for v in (o.verdict_model_first, o.verdict_model_second)]
    decisive = [v for v in verdicts if v in ("A", "B")]
    result: dict[str, Any] = {
        "prompts": len(outcomes),
        "wins": sum(p == 1.0 for p in prefs),
        "losses": sum(p == 0.0 for p in prefs),
        "ties": sum(p == 0.5 for p in prefs),
        "inconsistent": sum(o.outcomes[0] != o.outcomes[1] for o in outcomes),
        "verdict_parse_failures": sum(v is None for v in verdicts),
        "judge_first_position_rate": (sum(v == "A" for v in decisive) / len(decisive)) if decisive else float("nan"),
        "win_rate": 100.0 * float(np.mean(prefs)) if prefs else float("nan"),
        "win_rate_ci95": [100.0 * x for x in bootstrap_ci(prefs, n_resamples=n_resamples, seed=seed)],
        "length_model_mean": float(np.mean([o.len_model for o in outcomes])) if outcomes else float("nan"),
        "length_baseline_mean": float(np.mean([o.len_baseline for o in outcomes])) if outcomes else float("nan"),
    }
    if len(outcomes) >= 2:
        lm = [o.len_model for o in outcomes]
        lb = [o.len_baseline for o in outcomes]
        lc = length_controlled_winrate(prefs, lm, lb)
        result["lc_win_rate"] = lc.lc_win_rate
        result["lc_length_coef"] = lc.length_coef
        result["lc_win_rate_ci95"] = list(lc_bootstrap_ci(prefs, lm, lb, n_resamples=200, seed=seed))
    else:
        result["lc_win_rate"] = float("nan")
        result["lc_win_rate_ci95"] = [float("nan"), float("nan")]
    return result
