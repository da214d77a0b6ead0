"""A scripted "capable judge" engine: it writes the actor responses, judgments and meta-judgments of
``tests/data/judge_corpus.jsonl`` (part ``iteration``) for the prompts the real loop sends it.

The corpus was written so that a capable instruct model could have produced it (markdown reasoning,
restated responses, running scores, refusals, truncation, other languages; see
``tests/data/build_judge_corpus.py``). This engine looks each request up by its exact filled prompt,
built with the package's own templates, so the loop's prompt construction is checked too: a request
the corpus does not cover is an error naming the request, never a silent default.

``meta="capable"`` answers meta-judge prompts from the corpus (the judgment closer to the response's
true quality wins, equal distance is a tie). ``meta="first_position"`` is a position-only meta-judge:
it prefers Judgment A whatever the two judgments say -- the degenerate positional bias the pairs stage
and the summary must name.

``choice_probs`` serves the constrained modes' probability requests for corpus texts: a score request
gets 0.7 on the intended score's digit (rounded) and 0.15 on each neighbour (renormalised at the
ends), uniform for an invalid judgment; a verdict request gets 0.8/0.2 for the corpus verdict, 0.5/0.5
for a tie. (A whole constrained iteration is not scripted: its meta-judge prompts hold the rewritten
judgment texts, which the corpus does not contain.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.parsing import truncate_before_score, truncate_before_verdict
from metareward.templates import judge_prompt, meta_judge_prompt

CORPUS = Path(__file__).parent / "data" / "judge_corpus.jsonl"


def load_corpus(path: Path = CORPUS) -> list[dict]:
    """Every record of the corpus, in file order; a malformed line names its file and line."""
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return records


class ScriptedJudge(Engine):
    name = "scripted-judge"

    def __init__(self, records: Sequence[dict] | None = None, meta: str = "capable"):
        if meta not in ("capable", "first_position"):
            raise ValueError(f"meta must be 'capable' or 'first_position', got {meta!r}")
        records = load_corpus() if records is None else records
        self.meta_mode = meta
        self.actor: dict[str, list[str]] = {}
        self.judge: dict[str, list[str]] = {}
        self.meta: dict[str, str] = {}
        self.scores: dict[tuple[str, str], float | None] = {}  # (judge prompt, judgment prefix) -> score
        self.verdicts: dict[tuple[str, str], str | None] = {}
        self.requests: list[str] = []
        for r in records:
            if r.get("part") not in (None, "iteration"):
                continue
            if r["kind"] == "actor":
                self.actor.setdefault(r["instruction"], []).append(r["response"])
            elif r["kind"] == "judge":
                prompt = judge_prompt(r["instruction"], r["response"])
                self.judge.setdefault(prompt, []).append(r["judgment"])
                self.scores[(prompt, truncate_before_score(r["judgment"]))] = r["score"]
            elif r["kind"] == "meta_judge":
                prompt = meta_judge_prompt(r["instruction"], r["response"], r["judgment_a"], r["judgment_b"])
                self.meta[prompt] = r["meta_judgment"]
                self.verdicts[(prompt, truncate_before_verdict(r["meta_judgment"]))] = r["verdict"]

    def _texts(self, r: GenerationRequest) -> list[str]:
        user = r.messages[-1]["content"]
        if user in self.judge:
            texts = self.judge[user]
        elif user in self.meta:
            if self.meta_mode == "first_position":
                return ["Judgment A reads the rubric correctly and its score follows from it.\n\n"
                        "Winner: Judgment A"] * r.n
            texts = [self.meta[user]] * r.n
        elif user in self.actor:
            texts = self.actor[user]
        else:
            raise KeyError(f"scripted judge: no corpus output for request {r.id!r} ({user[:80]!r}...)")
        if len(texts) < r.n:
            raise ValueError(f"scripted judge: request {r.id!r} asks for {r.n} samples, the corpus has {len(texts)}")
        return list(texts[: r.n])

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        for r in requests:
            self.requests.append(r.id)
            texts = self._texts(r)
            yield GenerationOutput(r.id, tuple(Completion(t, len(t) // 4 + 1, True) for t in texts))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        for r in requests:
            user = r.messages[-1]["content"]
            if r.choices == ("A", "B"):
                prefix = r.assistant_prefix.removesuffix("Winner: Judgment ").rstrip()
                verdict = self.verdicts[(user, prefix)]
                probs = [0.5, 0.5] if verdict is None else ([0.8, 0.2] if verdict == "A" else [0.2, 0.8])
            else:
                prefix = r.assistant_prefix.removesuffix("Score: ").rstrip()
                if (user, prefix) not in self.scores:
                    raise KeyError(f"scripted judge: no corpus judgment for choice request {r.id!r}")
                score = self.scores[(user, prefix)]
                weights = [1.0] * len(r.choices)  # an invalid judgment (a refusal): no preference
                if score is not None:
                    weights = [0.0] * len(r.choices)
                    centre = int(round(score))
                    for k, w in ((centre - 1, 0.15), (centre, 0.7), (centre + 1, 0.15)):
                        if 0 <= k < len(weights):
                            weights[k] = w
                total = sum(weights)
                probs = [w / total for w in weights]
            yield ChoiceOutput(id=r.id, probs=probs)
