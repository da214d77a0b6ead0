"""What the experiment measures on the held-out prompts, for one model at a time.

* ``answer``: the model's greedy answer to every held-out prompt (temperature 0: one answer per prompt,
  no sampling noise between models);
* ``accuracy``: IFEval's four numbers over those answers -- prompt-level (every constraint of a prompt
  satisfied) and instruction-level (share of all constraints), strict and loose -- and the mean answer
  length; ``difference``: a model's numbers minus the seed model's, with a paired bootstrap 95% interval
  over prompts (the same resampled prompts for both models, so the interval is that of the difference);
* ``judge_pairs`` / ``judge_accuracy``: how well a model judges, against the verifier. Pairs are built once
  from the seed model's samples (``judge_pairs_k`` per held-out prompt): per prompt, a response that
  satisfies the most constraints against one that satisfies the fewest, when they differ. The model then
  judges both with the paper's rubric (``stages.judge``, the run's judge settings, kind ``self``) and
  prefers the one with the higher mean score; the share of pairs where that is the one satisfying more
  constraints is its accuracy. Equal scores are ties, reported and counted as half.

Generation goes through chunk logs (``stages.chunks.ChunkedPasses``) under the experiment's folder, so a
rerun after a kill, or with more arms, reuses what was generated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metareward.config import JudgeConfig
from metareward.engines.base import Engine, GenerationRequest, SamplingParams
from metareward.errors import InputError
from metareward.records import Prompt, Response
from metareward.stages import judge
from metareward.stages.chunks import ChunkedPasses
from metareward.stages.common import request_seed, user_turn
from metareward.verifiable.constraints import Constraint
from metareward.verifiable.verify import Verification, verify

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


@dataclass(frozen=True)
class HeldOut:
    """The held-out prompts and their constraints."""

    prompts: list[Prompt]
    constraints: dict[str, list[Constraint]]

    def check(self, prompt: Prompt, text: str) -> Verification:
        v = verify(prompt.id, prompt.text, self.constraints[prompt.id], text)
        if v.error is not None:
            raise RuntimeError(f"held-out prompt {prompt.id}: the checker failed ({v.error})")
        return v


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record what a model's evaluation folder was generated with (``settings.json``), or refuse to reuse
    it with other settings: its chunk logs would answer other requests. (The run loop refuses a finished
    stage whose settings changed the same way.)"""
    path = folder / "settings.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    if path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise InputError(f"{folder}: evaluated with other settings ({path}); use another experiment root "
                             "or remove the folder to evaluate again")
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def passes(engine: Callable[[], Engine], folder: Path, label: str, chunk_size: int = 64) -> ChunkedPasses:
    """Chunk-logged passes whose logs live in ``folder`` (one per pass name)."""
    folder.mkdir(parents=True, exist_ok=True)
    return ChunkedPasses(engine=engine, log_path=lambda name: folder / f"{name}.chunks.jsonl",
                         chunk_size=chunk_size, label=lambda name: f"[{label}] {name}")


def answer(heldout: HeldOut, run: ChunkedPasses, max_tokens: int, name: str = "answers") -> dict[str, str]:
    """The greedy answer to every held-out prompt, by prompt id."""
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    requests = [GenerationRequest(id=p.id, messages=user_turn(p.text), sampling=sampling, n=1, seed=0)
                for p in heldout.prompts]
    outs = run.generate(name, requests)
    return {pid: out.samples[0].text for pid, out in outs.items()}


def per_constraint(heldout: HeldOut, answers: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per constraint kind (IFEval instruction id), how many of the held-out prompts carrying it the
    answers satisfy (strict) out of how many carry it: shows which constraints a gain comes from (a
    model that only learned to be brief gains on length limits and loses on bullet lists)."""
    counts: dict[str, dict[str, int]] = {}
    for p in heldout.prompts:
        v = heldout.check(p, answers[p.id])
        for constraint, ok in zip(heldout.constraints[p.id], v.strict, strict=True):
            c = counts.setdefault(constraint.id, {"satisfied": 0, "prompts": 0})
            c["satisfied"] += int(ok)
            c["prompts"] += 1
    return dict(sorted(counts.items()))


def per_prompt(heldout: HeldOut, answers: dict[str, str]) -> dict[str, np.ndarray]:
    """Per held-out prompt (in order): all strict, all loose, constraints satisfied strict and loose,
    constraints in all, answer length in characters."""
    rows = []
    for p in heldout.prompts:
        v = heldout.check(p, answers[p.id])
        rows.append((v.all_strict, v.all_loose, v.satisfied, sum(v.loose), v.total, len(answers[p.id])))
    cols = np.asarray(rows, dtype=float).T
    return {"all_strict": cols[0], "all_loose": cols[1], "sat_strict": cols[2], "sat_loose": cols[3],
            "total": cols[4], "length": cols[5]}


def _metrics(t: dict[str, np.ndarray], idx: np.ndarray | slice = slice(None)) -> np.ndarray:
    """The four accuracies (percent) over the prompts ``idx`` (a bootstrap resample, or all)."""
    total = t["total"][idx].sum()
    return 100 * np.array([t["all_strict"][idx].mean(), t["all_loose"][idx].mean(),
                           t["sat_strict"][idx].sum() / total, t["sat_loose"][idx].sum() / total])


def accuracy(table: dict[str, np.ndarray]) -> dict[str, float]:
    """Prompt- and instruction-level accuracy (strict, loose; percent) and mean answer length."""
    out = {name: round(float(v), 2) for name, v in zip(METRICS, _metrics(table), strict=True)}
    out["mean_length_chars"] = round(float(table["length"].mean()), 1)
    out["prompts"] = len(table["total"])
    return out


def difference(model: dict[str, np.ndarray], seed: dict[str, np.ndarray], resamples: int,
               rng_seed: int = 0) -> dict[str, dict[str, float]]:
    """Model minus seed model for each metric (percentage points), with the paired bootstrap 95% interval:
    the same ``resamples`` resamples of the prompts (drawn with replacement) for both."""
    n = len(seed["total"])
    rng = np.random.default_rng(rng_seed)
    point = _metrics(model) - _metrics(seed)
    draws = np.empty((resamples, len(METRICS)))
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        draws[b] = _metrics(model, idx) - _metrics(seed, idx)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {name: {"diff": round(float(point[i]), 2), "ci95": [round(float(low[i]), 2), round(float(high[i]), 2)]}
            for i, name in enumerate(METRICS)}


def judge_pairs(heldout: HeldOut, run: ChunkedPasses, k: int, max_tokens: int) -> list[tuple[Response, Response]]:
    """(more constraints satisfied, fewer) response pairs from ``k`` samples of the seed model per prompt;
    prompts whose samples all satisfy the same number are left out. Sampling at the actor's usual
    temperature 0.8, seeded per prompt."""
    sampling = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max_tokens)
    requests = [GenerationRequest(id=p.id, messages=user_turn(p.text), sampling=sampling, n=k,
                                  seed=request_seed(0, 0, "heldout_pairs", p.id)) for p in heldout.prompts]
    outs = run.generate("pair_samples", requests)
    pairs = []
    for p in heldout.prompts:
        texts = list(dict.fromkeys(outs[p.id].texts))  # distinct samples, first occurrence order
        scored = sorted(((heldout.check(p, t).satisfied, i, t) for i, t in enumerate(texts)), key=lambda x: (-x[0], x[1]))
        (best, bi, bt), (worst, wi, wt) = scored[0], scored[-1]
        if best > worst:
            pairs.append((Response(f"{p.id}/r{bi}", p.id, bi, bt), Response(f"{p.id}/r{wi}", p.id, wi, wt)))
    return pairs


def judge_accuracy(heldout: HeldOut, pairs: Sequence[tuple[Response, Response]], cfg: JudgeConfig,
                   run: ChunkedPasses) -> dict[str, Any]:
    """How often the model's own judge (paper's rubric, ``cfg`` as a ``self`` judge) prefers the response
    that satisfies more constraints; ties (equal mean scores) count half."""
    by_id = {p.id: p for p in heldout.prompts}
    responses = [r for pair in pairs for r in pair]
    judgments = judge.run(by_id, responses, dataclasses.replace(cfg, kind="self"), 0, 0, run)
    scores = {r_id: float(np.mean(s)) if s else None for r_id, s in judge.valid_scores(judgments).items()}
    correct = wrong = ties = unscored = 0
    for better, worse in pairs:
        a, b = scores.get(better.id), scores.get(worse.id)
        if a is None or b is None:
            unscored += 1
        elif a > b:
            correct += 1
        elif a < b:
            wrong += 1
        else:
            ties += 1
    judged = correct + wrong + ties
    return {"pairs": len(pairs), "correct": correct, "wrong": wrong, "ties": ties, "unscored": unscored,
            "accuracy": round(100 * (correct + ties / 2) / judged, 2) if judged else None}


def pair_agreement(pairs: Sequence[Any], constraints: dict[str, list[Constraint]]) -> dict[str, int]:
    """How an iteration's actor pairs (``PreferencePair``) look to the verifier: how many have a chosen
    response that satisfies more of its prompt's constraints than the rejected one, fewer, or as many.
    For the control arm every pair is "more" by construction; for a self-judging arm it shows how much
    constraint signal the model's own judge put into its training pairs."""
    out = {"more": 0, "fewer": 0, "equal": 0}
    for p in pairs:
        cons = constraints[p.prompt_id]
        chosen = verify(p.prompt_id, p.prompt, cons, p.chosen).satisfied
        rejected = verify(p.prompt_id, p.prompt, cons, p.rejected).satisfied
        out["more" if chosen > rejected else "fewer" if chosen < rejected else "equal"] += 1
    return out
