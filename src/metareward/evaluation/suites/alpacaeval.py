"""AlpacaEval 2 with any judge: the ``weighted_alpaca_eval_gpt4_turbo`` protocol, offline.

What alpaca_eval 0.6.6 does, and what this module does the same way (tests compare with its code):

* **Order.** ``output_1`` is the baseline (GPT-4 Turbo), ``output_2`` the model. Per instruction the two
  are swapped when ``random.Random("is_switched_outputs" + instruction + str(seed)).choices([False,
  True])[0]`` (``RandomSwitchTwoColumnsProcessor`` seeded on the instruction; the annotator's seed is 0).
* **Prompt.** The annotator's template (read from the installed package) with ``{instruction}``,
  ``{output_1}``, ``{output_2}`` replaced once each in that order (``utils.make_prompts``), then split
  into chat messages at ``<|im_start|>ROLE`` / ``<|im_end|>`` (``utils.prompt_to_chatml``).
* **Preference.** The judge's next-token probabilities of the two labels ("m": the first shown output
  is better, "M": the second), ``p = 2 - P(m) / (P(m) + P(M))`` in the shown order, ``3 - p`` when
  switched (``completion_parsers.logprob_parser``, ``is_binarize: false``). So ``p`` is in [1, 2]
  and ``p = 2`` means the model wins.
* **Win rate** = ``100 * mean(p - 1)`` and its standard error ``100 * sem(p - 1)`` (ddof 1)
  (``metrics.helpers.AbsoluteScoringRule.describe_head2head``).
* **LC win rate**: ``evaluation.lc_winrate`` -- alpaca_eval's ``length_controlled_minimal`` GLM, NOT
  the leaderboard's ``length_controlled_v1`` (that one needs per-instruction difficulties fitted on
  AlpacaEval's hub annotations). It is reported as ``lc_win_rate_minimal`` and must not be compared with
  leaderboard or paper LC values.

One difference: the engines give the labels' probabilities over the whole vocabulary (``choice_probs``,
renormalised over {m, M}), where OpenAI returns only the top 5 log-probabilities and alpaca_eval counts
a label missing from them as probability 0 (and no annotation when both are missing). The two agree
whenever both labels are in the judge's top 5, which is the normal case for a judge that follows the
format; for a weak proxy judge ours is the better-defined number.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine
from metareward.evaluation.lc_winrate import lc_bootstrap_ci, length_controlled_winrate
from metareward.evaluation.suites.annotation_cache import AnnotationCache, annotation_key
from metareward.evaluation.suites.data import AlpacaAnnotator, AlpacaItem

SWITCH_COLUMN = "is_switched_outputs"
ANNOTATOR_SEED = 0


def is_switched(instruction: str, seed: int = ANNOTATOR_SEED) -> bool:
    """Whether alpaca_eval shows the model's output first ("m") for this instruction."""
    return random.Random(SWITCH_COLUMN + instruction + str(seed)).choices([False, True], k=1)[0]


def fill_template(template: str, instruction: str, output_1: str, output_2: str) -> str:
    """``utils.make_prompts``: replace the first occurrence of each placeholder, in this order."""
    for name, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        template = template.replace("{" + name + "}", value, 1)
    return template


def chatml_messages(prompt: str) -> tuple[dict[str, str], ...]:
    """``utils.prompt_to_chatml`` for the roles this template uses (system, user, assistant)."""
    prompt = prompt.strip()
    if not (prompt.startswith("<|im_start|>") and prompt.endswith("<|im_end|>")):
        raise ValueError("annotator template must start with <|im_start|> and end with <|im_end|>")
    messages = []
    for part in prompt.split("<|im_start|>")[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return tuple(messages)


def shown_preference(p_first: float) -> float:
    """``2 - P(m) / (P(m) + P(M))`` from ``p_first`` = P(m) / (P(m) + P(M)), in the shown order."""
    return 2.0 - p_first


def model_preference(p_first: float, switched: bool) -> float:
    """The preference in alpaca_eval's orientation (1 baseline, 2 model), undoing the switch."""
    p = shown_preference(p_first)
    return 3.0 - p if switched else p


def judge_requests(items: Sequence[AlpacaItem], answers: dict[str, str], annotator: AlpacaAnnotator,
                   seed: int = ANNOTATOR_SEED) -> list[tuple[ChoiceRequest, bool, str, str]]:
    """One choice request per item: (request, switched, first shown output, second shown output)."""
    out = []
    for it in items:
        model = answers[it.id]
        switched = is_switched(it.instruction, seed)
        o1, o2 = (model, it.baseline_output) if switched else (it.baseline_output, model)
        msgs = chatml_messages(fill_template(annotator.template, it.instruction, o1, o2))
        choices = (annotator.numerator_token, *[t for t in annotator.denominator_tokens
                                                if t != annotator.numerator_token])
        out.append((ChoiceRequest(id=it.id, messages=msgs, assistant_prefix="", choices=choices), switched, o1, o2))
    return out


def annotate(judge: Engine, judge_id: str, items: Sequence[AlpacaItem], answers: dict[str, str],
             annotator: AlpacaAnnotator, cache: AnnotationCache, log: Callable[[str], None] = print,
             seed: int = ANNOTATOR_SEED) -> dict[str, float]:
    """P(m) / (P(m) + P(M)) for every item, in the shown order; cached (see ``annotation_cache``)."""
    reqs = judge_requests(items, answers, annotator, seed)
    keys = [annotation_key(judge_id, annotator.template, it.instruction, o1, o2, {"annotator": annotator.name})
            for it, (_, _, o1, o2) in zip(items, reqs, strict=True)]

    def encode(o: ChoiceOutput) -> tuple[str, Any]:
        return o.id, float(o.probs[0])

    return cache.annotate([r for r, *_ in reqs], keys, "alpacaeval2", judge.choice_probs, encode, lambda r: r.id, log)


def summarize(items: Sequence[AlpacaItem], answers: dict[str, str], p_first: dict[str, float],
              seed: int = 0, n_resamples: int = 200, annotator_seed: int = ANNOTATOR_SEED) -> dict[str, Any]:
    """Win rate +- standard error, the minimal LC win rate with a bootstrap 95% interval, lengths.

    An item whose annotation has no usable probability (NaN: the judge put no mass on either label) is
    left out, as alpaca_eval drops an annotation it cannot parse; ``n_invalid`` counts them."""
    n_invalid = sum(1 for it in items if not math.isfinite(p_first[it.id]))
    items = [it for it in items if math.isfinite(p_first[it.id])]
    prefs = np.array([model_preference(p_first[it.id], is_switched(it.instruction, annotator_seed))
                      for it in items], dtype=float)
    x = prefs - 1.0
    n = len(items)
    len_model = [len(answers[it.id]) for it in items]
    len_base = [len(it.baseline_output) for it in items]
    res: dict[str, Any] = {
        "n": n,
        "n_invalid": n_invalid,
        "win_rate": 100.0 * float(np.mean(x)) if n else math.nan,
        "standard_error": 100.0 * float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "n_wins": int(np.sum(x > 0.5)),
        "n_wins_base": int(np.sum(x < 0.5)),
        "n_draws": int(np.sum(x == 0.5)),
        "avg_length": float(np.mean(len_model)) if n else math.nan,
        "baseline_avg_length": float(np.mean(len_base)) if n else math.nan,
        "per_item": {it.id: float(p) for it, p in zip(items, prefs, strict=True)},
    }
    if n >= 2:
        lc = length_controlled_winrate(x, len_model, len_base)
        res["lc_win_rate_minimal"] = lc.lc_win_rate
        res["lc_length_coef"] = lc.length_coef
        res["lc_win_rate_minimal_ci95"] = list(lc_bootstrap_ci(x, len_model, len_base, n_resamples=n_resamples,
                                                                seed=seed))
    else:
        res["lc_win_rate_minimal"] = math.nan
        res["lc_win_rate_minimal_ci95"] = [math.nan, math.nan]
    return res

