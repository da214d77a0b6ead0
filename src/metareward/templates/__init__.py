"""The paper's prompts, kept as data files, and how they are filled.

* ``judge.txt``: the LLM-as-a-Judge prompt (Self-Rewarding Fig. 2, Meta-Rewarding App. A.1; docs/method.md §2.3),
  with ``<INSTRUCTION_HERE>`` and ``<RESPONSE_HERE>``.
* ``meta_judge.txt``: the LLM-as-a-Meta-Judge prompt (Meta-Rewarding Fig. 2; docs/method.md §3.3), with
  ``{prompt}``, ``{response}``, ``{judgment a}``, ``{judgment b}``.
* ``pairwise_judge.txt``: our own pairwise judge prompt (the meta-judge's style and the judge's rubric,
  applied to two responses; docs/evaluation.md, "Judge accuracy against gold labels"), with ``{prompt}``,
  ``{response a}``, ``{response b}``; it ends in ``Winner: [Response A | Response B]``.

Filling is a single pass over the template's placeholders, so a user prompt or a response that itself
contains ``{response}`` or ``<RESPONSE_HERE>`` is inserted literally and never re-expanded.
The whole filled text is the *user* turn of the chat template (docs/method.md §2.3).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent
JUDGE_FIELDS = ("<INSTRUCTION_HERE>", "<RESPONSE_HERE>")
META_FIELDS = ("{prompt}", "{response}", "{judgment a}", "{judgment b}")
PAIRWISE_FIELDS = ("{prompt}", "{response a}", "{response b}")


@lru_cache(maxsize=16)
def load_template(path: str | None, default: str) -> str:
    """The template text at ``path``, or the packaged ``default`` file (``judge.txt`` ...)."""
    return Path(path).read_text(encoding="utf-8") if path else (_HERE / default).read_text(encoding="utf-8")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace each placeholder key of ``values`` in one pass (no re-expansion of inserted text)."""
    missing = [k for k in values if k not in template]
    if missing:
        raise ValueError(f"template lacks placeholder(s) {missing}")
    pattern = re.compile("|".join(re.escape(k) for k in values))
    return pattern.sub(lambda m: values[m.group(0)], template)


def judge_prompt(instruction: str, response: str, template: str | None = None) -> str:
    """The filled LLM-as-a-Judge prompt for one (instruction, response)."""
    text = load_template(template, "judge.txt")
    return fill(text, {"<INSTRUCTION_HERE>": instruction, "<RESPONSE_HERE>": response})


def meta_judge_prompt(
    instruction: str, response: str, judgment_a: str, judgment_b: str, template: str | None = None
) -> str:
    """The filled LLM-as-a-Meta-Judge prompt comparing two judgments of one response."""
    text = load_template(template, "meta_judge.txt")
    return fill(
        text,
        {"{prompt}": instruction, "{response}": response, "{judgment a}": judgment_a, "{judgment b}": judgment_b},
    )


def pairwise_judge_prompt(instruction: str, response_a: str, response_b: str, template: str | None = None) -> str:
    """The filled pairwise judge prompt: which of two responses to one instruction is better."""
    text = load_template(template, "pairwise_judge.txt")
    return fill(text, {"{prompt}": instruction, "{response a}": response_a, "{response b}": response_b})
