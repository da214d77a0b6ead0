"""Judges that are functions, not models: ``judge.kind: verifier`` and ``judge.kind: "python: mod:fn"``.

Both write the same ``Judgment`` records as the model judge, so length control, pair building, summaries
and reports read them unchanged:

* ``verifier``: score = 5 x share of the prompt's constraints the response satisfies
  (``verifiable.verify``); the text lists the failed constraints and ends with ``Score: x``;
* ``python: package.module:function``: a user's reward function ``(prompt, response) -> float`` on the
  paper's 0-5 scale, as TRL's reward functions are (called once per response).

A function judge is deterministic, so it writes ONE judgment per response (index 0) whatever
``judge.n`` says: N identical copies would only weigh every response equally in the mean.

Nothing becomes a silent score: a checker that raises, a reward function that raises or returns
something other than a finite number in [0, 5], gives an *invalid* judgment (``score=None``) whose text
starts with ``INVALID`` and a reason from ``REASONS``; ``invalid_reasons`` counts them for the manifest.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from metareward.errors import InputError
from metareward.records import Judgment, Prompt, Response
from metareward.verifiable.constraints import Constraint
from metareward.verifiable.verify import verdict_text, verifier_score, verify

RewardFunction = Callable[[str, str], float]
FunctionJudge = Callable[[Mapping[str, Prompt], Sequence[Response]], list[Judgment]]
PYTHON_PREFIX = "python:"
INVALID = "INVALID"
REASONS = ("checker_error", "reward_raised", "reward_not_a_number", "reward_not_finite", "reward_out_of_range",
           "no_score")
"""Why a judgment is invalid: the checker raised; the reward function raised, returned a non-number, a
NaN or infinity, or a value outside [0, 5]; ``no_score``: a model judgment without a parseable score."""


def _judgment(r: Response, text: str, score: float | None) -> Judgment:
    return Judgment(id=f"{r.id}/j0", response_id=r.id, prompt_id=r.prompt_id, index=0, text=text, score=score)


def _invalid(r: Response, reason: str, detail: str) -> Judgment:
    return _judgment(r, f"{INVALID} ({reason}): {detail}", None)


def verifier_judgments(
    prompts: Mapping[str, Prompt], responses: Sequence[Response], constraints: Mapping[str, Sequence[Constraint]]
) -> list[Judgment]:
    """One judgment per response: the share of its prompt's constraints it satisfies, on 0-5."""
    out = []
    for r in responses:
        cons = constraints.get(r.prompt_id)
        if not cons:
            raise InputError(f"prompt {r.prompt_id}: no constraints for the verifier judge "
                             "(the prompts file needs a non-empty 'constraints' field on every line)")
        v = verify(r.prompt_id, prompts[r.prompt_id].text, cons, r.text)
        if v.error is not None:
            out.append(_invalid(r, "checker_error", v.error))
        else:
            out.append(_judgment(r, verdict_text(cons, v), verifier_score(v)))
    return out


def load_reward_function(kind: str) -> RewardFunction:
    """The function named by ``python: package.module:function``; an ``InputError`` naming
    ``judge.kind`` when it cannot be imported or is not callable."""
    spec = kind[len(PYTHON_PREFIX):].strip() if kind.startswith(PYTHON_PREFIX) else ""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InputError(f"judge.kind: expected 'python: package.module:function', got {kind!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"judge.kind: cannot load {spec!r} ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise InputError(f"judge.kind: {spec!r} is not callable")
    return fn


def python_judgments(
    prompts: Mapping[str, Prompt], responses: Sequence[Response], fn: RewardFunction
) -> list[Judgment]:
    """One judgment per response: ``fn(prompt, response)``, checked to be a finite number in [0, 5]."""
    out = []
    for r in responses:
        try:
            value = fn(prompts[r.prompt_id].text, r.text)
        except Exception as e:  # the user's code: any failure is an invalid judgment, counted
            out.append(_invalid(r, "reward_raised", f"{type(e).__name__}: {e}"))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(_invalid(r, "reward_not_a_number", f"returned {value!r}"))
        elif not math.isfinite(value):
            out.append(_invalid(r, "reward_not_finite", f"returned {value!r}"))
        elif not 0 <= value <= 5:
            out.append(_invalid(r, "reward_out_of_range", f"returned {value!r}, outside [0, 5]"))
        else:
            out.append(_judgment(r, f"Score: {float(value):g}", float(value)))
    return out


def function_judge(kind: str, prompts_path: str) -> FunctionJudge | None:
    """The judge of a function kind, ready to call on (prompts by id, responses); None for ``self`` and
    ``model``. Loads what it needs now (the prompt file's constraints, the user's function), so a run
    fails on a bad file or an unimportable function before any model is loaded."""
    if kind == "verifier":
        from metareward.verifiable.constraints import load_constraints

        constraints = load_constraints(prompts_path)
        return lambda prompts, responses: verifier_judgments(prompts, responses, constraints)
    if kind.startswith(PYTHON_PREFIX):
        fn = load_reward_function(kind)
        return lambda prompts, responses: python_judgments(prompts, responses, fn)
    return None


def invalid_reasons(judgments: Sequence[Judgment]) -> Counter:
    """Invalid judgments counted by reason (a model judgment without a score counts as ``no_score``)."""
    counts: Counter = Counter()
    for j in judgments:
        if j.score is None:
            reason = j.text[len(INVALID) + 2:].split(")", 1)[0] if j.text.startswith(f"{INVALID} (") else "no_score"
            counts[reason] += 1
    return counts
