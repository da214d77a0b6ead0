"""Evaluation Fine-Tuning (EFT) data: LLM-as-a-Judge examples whose scores agree with human rankings.

The paper's seed model is first fine-tuned on EFT (docs/method.md §1.1, §10), built by Self-Rewarding from Open
Assistant prompts that have several human-ranked responses:

1. every (prompt, response) goes into the training judge prompt (``metareward.templates.judge_prompt``,
   the additive 5-point prompt, as the user turn), and the seed model writes ``n`` judgments for it;
2. each judgment is scored like in the loop's judge stage (``metareward.stages.judge``): ``free_text``
   parses the last ``Score: x`` (a judgment without one is invalid and ignored); ``constrained`` cuts the
   judgment before its score, appends ``Score: `` and takes the expected digit from the next-token
   distribution (its text then ends with the most likely digit);
3. a prompt is kept only if the order of its responses' **mean** scores agrees with the human order:
   for every two responses with different human ranks, the better-ranked one has the strictly higher
   mean score (equal human ranks impose nothing; a response without any valid judgment fails the prompt);
4. from a kept prompt, each response contributes its judgment whose score is closest to the response's
   mean (``per_response="closest"``, ties to the lower index; the most representative judgment), or all
   its valid judgments (``"all"``);
5. the over-represented score is down-sampled (the paper: "too many judgments came out at score 4, so the
   set was resampled to drop part of the most common score"): the most common score value keeps at most
   ``downsample_ratio`` times as many examples as the second most common, chosen at random (seeded);
6. prompts are split into train and eval (``eval_fraction``, default 25% as in docs/method.md §10; seeded), so a
   prompt's examples are all in one split.

**Input**: an Open-Assistant-like ranked-responses JSONL, read by ``metareward.ranked.load_ranked``
(the format the judge-agreement evaluation reads too)::

    {"id": "oa-0001", "prompt": "How do I boil an egg?",
     "responses": [{"text": "Place the egg in boiling water for 7 minutes...", "rank": 0},
                   {"text": "Eggs are laid by hens.", "rank": 1}]}

``rank`` 0 is the best; integers >= 0, ties allowed, at least two different ranks per prompt; ``id``
optional (no "/"); every error names the file, line and field.

**Output** (``out_dir``): ``train.jsonl`` and ``eval.jsonl`` with one SFT example per line::

    {"id": "oa-0001/r0/j2", "prompt": "<the filled judge prompt>", "completion": "...\\nScore: 4",
     "score": 4.0, "human_rank": 0}

(``prompt`` is the user turn, ``completion`` the assistant turn, ``score`` the score the completion states),
``judgments.jsonl`` (every judgment, ``records.Judgment``), and ``report.json`` (counts; see ``build_eft``).
Generation is resumable: the judge stage (``stages.judge.run``) runs through chunk logs in ``out_dir/.work``
(``metareward.stages.chunks.ChunkedPasses``); rerunning after a kill redoes only unfinished chunks, and a finished build is not
recomputed. Changing the settings or the input on a half-built ``out_dir`` is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from metareward.config import JudgeConfig, settings_hash
from metareward.engines.base import Engine
from metareward.errors import InputError
from metareward.files import atomic_write_json, atomic_write_text
from metareward.layout import ARTIFACTS, WORK_DIR
from metareward.parsing import parse_score
from metareward.ranked import RankedPrompt, load_ranked
from metareward.records import Judgment, Prompt, Response, to_json
from metareward.seeds import named_rng
from metareward.stages import judge
from metareward.stages.chunks import ChunkedPasses
from metareward.templates import judge_prompt

ScoringMode = Literal["free_text", "constrained"]
EXAMPLE_RANKED = Path(__file__).resolve().parent / "data" / "eft_example.jsonl"
"""A tiny hand-written ranked file (order known by construction), to show the schema and run offline."""
_LOGS = {judge.PASS: "judge.chunks.jsonl", judge.SCORE_PASS: "score.chunks.jsonl"}  # chunk logs under .work
_LABELS = {judge.PASS: "eft judge", judge.SCORE_PASS: "eft score"}


@dataclass(frozen=True)
class EFTSettings:
    """How EFT data is built. Sampling defaults are the loop's judge defaults (docs/method.md §10)."""

    n: int = 3  # judgments per response (Self-Rewarding judged each response 3 times in its loop)
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    scoring: ScoringMode = "free_text"
    template: str | None = None  # custom judge prompt (default: the paper's)
    per_response: Literal["closest", "all"] = "closest"
    downsample_ratio: float | None = 1.0  # most common score <= ratio * second most common; None: off
    eval_fraction: float = 0.25
    seed: int = 0
    chunk_size: int = 64  # sequences (a request of n samples counts n) per resumable chunk

    def validate(self) -> None:
        checks = [
            (self.n >= 1, "n must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.scoring in ("free_text", "constrained"), "scoring must be free_text or constrained"),
            (self.per_response in ("closest", "all"), "per_response must be closest or all"),
            (self.downsample_ratio is None or self.downsample_ratio >= 1, "downsample_ratio must be >= 1"),
            (0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (self.template is None or Path(self.template).is_file(), f"template file not found: {self.template}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"eft settings: {msg}")

    def judge_config(self) -> JudgeConfig:
        return JudgeConfig(n=self.n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                           scoring=self.scoring, template=self.template)


@dataclass
class EFTExample:
    """One SFT example (a line of train.jsonl / eval.jsonl)."""

    id: str
    prompt: str
    completion: str
    score: float
    human_rank: int


def agrees(mean_scores: Sequence[float | None], ranks: Sequence[int]) -> bool:
    """True if for every pair with different human ranks the better-ranked (lower rank) response has the
    strictly higher mean score. A response without a score (None) makes it False."""
    if any(m is None for m in mean_scores):
        return False
    for a in range(len(ranks)):
        for b in range(len(ranks)):
            if ranks[a] < ranks[b] and not mean_scores[a] > mean_scores[b]:  # type: ignore[operator]
                return False
    return True


def downsample(examples: list[EFTExample], ratio: float | None, seed: int) -> tuple[list[EFTExample], dict]:
    """Cut the most common score to ``ratio`` x the second most common (seeded); keeps input order."""
    counts = Counter(e.score for e in examples)
    info = {"score": None, "before": 0, "after": 0}
    if ratio is None or len(counts) < 2:
        return examples, info
    (top, c1), (_, c2) = counts.most_common(2)
    limit = int(ratio * c2)
    if c1 <= limit:
        return examples, info
    idx = [i for i, e in enumerate(examples) if e.score == top]
    keep = set(named_rng("eft-downsample", seed).sample(idx, limit))
    info = {"score": top, "before": c1, "after": limit}
    return [e for i, e in enumerate(examples) if e.score != top or i in keep], info


def split_prompts(prompt_ids: Sequence[str], eval_fraction: float, seed: int) -> set[str]:
    """The prompt ids that go to eval: round(eval_fraction * n) of them, chosen at random (seeded)."""
    ids = list(prompt_ids)
    named_rng("eft-split", seed).shuffle(ids)
    return set(ids[: round(eval_fraction * len(ids))])


def _histogram(examples: Sequence[EFTExample]) -> dict[str, int]:
    return {f"{k:g}": v for k, v in sorted(Counter(e.score for e in examples).items())}


@dataclass
class _Kept:
    """What the agreement filter kept (steps 3 and 4 of the module docstring), before down-sampling."""

    examples: list[EFTExample]  # input order: prompt, response, judgment
    agreeing: list[str]  # ids of the prompts kept, in input order
    disagreeing: int = 0
    unscored: int = 0  # prompts with a response without any valid judgment


def build_eft(
    input_path: str | Path,
    out_dir: str | Path,
    engine: Engine | Callable[[], Engine],
    settings: EFTSettings = EFTSettings(),
) -> dict[str, Any]:
    """Build EFT train/eval files from a ranked JSONL (see the module docstring). Returns the report.

    ``engine`` may be a factory: it is called only if some judgments remain to be generated. Report keys:
    ``prompts``, ``responses``, ``judgments``, ``valid_judgments``, ``prompts_agreeing``,
    ``prompts_disagreeing``, ``prompts_unscored`` (a response had no valid judgment), ``examples`` (before
    down-sampling), ``downsampled`` ({score, before, after}), ``train``/``eval`` (examples) and
    ``train_prompts``/``eval_prompts``, score histograms ``scores_before``/``scores_after``.
    """
    settings.validate()
    out_dir = Path(out_dir)
    ranked = load_ranked(input_path)
    work = _claim(out_dir, input_path, ranked, settings)
    responses = _responses(ranked)
    judgments = _judge(ranked, responses, engine, settings, work)
    kept = _keep_agreeing(ranked, judgments, settings)
    examples, info = downsample(kept.examples, settings.downsample_ratio, settings.seed)
    eval_ids = split_prompts(kept.agreeing, settings.eval_fraction, settings.seed)
    train = [e for e in examples if e.id.split("/")[0] not in eval_ids]
    evals = [e for e in examples if e.id.split("/")[0] in eval_ids]
    report: dict[str, Any] = {
        "input": str(input_path), "out_dir": str(out_dir),
        "prompts": len(ranked), "responses": len(responses), "judgments": len(judgments),
        "valid_judgments": sum(j.score is not None for j in judgments),
        "prompts_agreeing": len(kept.agreeing), "prompts_disagreeing": kept.disagreeing,
        "prompts_unscored": kept.unscored, "examples": len(kept.examples),
        "scores_before": _histogram(kept.examples), "downsampled": info, "scores_after": _histogram(examples),
        "train": len(train), "eval": len(evals), "train_prompts": len(set(kept.agreeing) - eval_ids),
        "eval_prompts": len(eval_ids), "settings": asdict(settings),
    }
    _write(out_dir, judgments, train, evals, report)
    return report


def _claim(out_dir: Path, input_path: str | Path, ranked: list[RankedPrompt], settings: EFTSettings) -> Path:
    """The build's work folder, after checking that ``out_dir`` holds no build of other settings or input
    (a half-built folder resumes only the build that started it); the first call records the settings."""
    work = out_dir / WORK_DIR
    key = settings_hash(asdict(settings), [asdict(r) for r in ranked])
    settings_file = work / "settings.json"
    if settings_file.is_file():
        if json.loads(settings_file.read_text())["hash"] != key:
            raise InputError(f"{out_dir}: holds an EFT build with other settings or input; use another --out "
                             f"directory or delete {out_dir}")
    else:
        atomic_write_json(settings_file, {"hash": key, "settings": asdict(settings), "input": str(input_path)})
    return work


def _responses(ranked: list[RankedPrompt]) -> dict[str, Response]:
    """Every ranked response as a judge-stage ``Response``, by id ``<prompt id>/r<k>`` (input order)."""
    return {
        f"{r.id}/r{k}": Response(id=f"{r.id}/r{k}", prompt_id=r.id, index=k, text=t)
        for r in ranked
        for k, t in enumerate(r.texts)
    }


def _judge(ranked: list[RankedPrompt], responses: dict[str, Response], engine: Engine | Callable[[], Engine],
           settings: EFTSettings, work: Path) -> list[Judgment]:
    """``settings.n`` judgments of every response (steps 1-2), through the judge stage's resumable chunk
    logs in ``work``. A factory ``engine`` is called only if some chunk is left to run, and what it made is
    closed here."""
    prompts = {r.id: Prompt(r.id, r.prompt) for r in ranked}
    made: list[Engine] = []

    def get_engine() -> Engine:
        if not made:
            made.append(engine if isinstance(engine, Engine) else engine())
        return made[0]

    passes = ChunkedPasses(get_engine, lambda name: work / _LOGS[name], settings.chunk_size,
                           lambda name: _LABELS[name])
    try:
        return judge.run(prompts, list(responses.values()), settings.judge_config(), settings.seed, 0, passes)
    finally:
        if made and made[0] is not engine:
            made[0].close()


def _keep_agreeing(ranked: list[RankedPrompt], judgments: list[Judgment], settings: EFTSettings) -> _Kept:
    """The prompts whose mean scores order their responses as the humans did, and their examples
    (steps 3-4)."""
    by_response: dict[str, list[Judgment]] = {}
    for j in judgments:
        by_response.setdefault(j.response_id, []).append(j)
    kept = _Kept(examples=[], agreeing=[])
    for r in ranked:
        valid = [[j for j in by_response[f"{r.id}/r{k}"] if j.score is not None] for k in range(len(r.texts))]
        means = [sum(j.score for j in v) / len(v) if v else None for v in valid]
        if any(m is None for m in means):
            kept.unscored += 1
        elif not agrees(means, r.ranks):
            kept.disagreeing += 1
        else:
            kept.agreeing.append(r.id)
            kept.examples += _examples(r, valid, means, settings)
    return kept


def _examples(r: RankedPrompt, valid: list[list[Judgment]], means: list[float],
              settings: EFTSettings) -> list[EFTExample]:
    """The SFT examples of one kept prompt: per response, the judgment closest to its mean score (ties: the
    lower index) or all its valid judgments; the score is the one the completion states."""
    examples = []
    for k, text in enumerate(r.texts):
        chosen = valid[k]
        if settings.per_response == "closest":
            chosen = [min(chosen, key=lambda j, m=means[k]: (abs(j.score - m), j.index))]
        filled = judge_prompt(r.prompt, text, settings.template)
        for j in chosen:
            stated = parse_score(j.text, text)
            examples.append(EFTExample(
                id=j.id, prompt=filled, completion=j.text,
                score=float(stated if stated is not None else j.score), human_rank=r.ranks[k],
            ))
    return examples


def _write(out_dir: Path, judgments: list[Judgment], train: list[EFTExample], evals: list[EFTExample],
           report: dict[str, Any]) -> None:
    """The build's files, each written atomically, the report last (a report on disk means every other
    file is complete)."""
    atomic_write_text(out_dir / ARTIFACTS["judgments"], "".join(to_json(j) + "\n" for j in judgments))
    atomic_write_text(out_dir / "train.jsonl", _jsonl(train))
    atomic_write_text(out_dir / "eval.jsonl", _jsonl(evals))
    atomic_write_json(out_dir / "report.json", report)


def _jsonl(examples: list[EFTExample]) -> str:
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples)


__all__ = ["EFTExample", "EFTSettings", "RankedPrompt", "agrees", "build_eft", "downsample", "load_ranked",
           "split_prompts", "EXAMPLE_RANKED"]
