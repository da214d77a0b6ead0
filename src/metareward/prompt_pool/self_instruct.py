"""Generating a prompt pool with the Self-Instruct recipe of the paper (docs/method.md §1.2).

Self-Rewarding (whose 20k prompts Meta-Rewarding uses) prompted a fixed chat model 8-shot in the style of
Self-Instruct: **6 demonstrations sampled from the seed prompts and 2 from the prompts generated so far**,
decoding at **T=0.6, top-p 0.9**, then applied Self-Instruct's filters (ROUGE-L, keywords, length; see
``metareward.prompt_pool.filters``).

How it runs here:

* Work proceeds in *rounds* of ``requests_per_round`` requests. Each request gets its own 8 demonstrations:
  6 seeds and 2 generated prompts drawn (without replacement) from the pool kept *before the round
  started*; while fewer than 2 have been generated, seeds fill the gap. The demonstrations are shuffled
  (seeded by ``seed``, round and request index) and numbered "Task 1:" .. "Task 8:".
* **Chat, not raw completion.** Our engines take chat messages, so Self-Instruct's template ("Come up with a
  series of tasks: Task 1: ... Task 8: ... Task 9:") is sent as the *user* turn
  (``metareward/data/self_instruct_prompt.txt``) and the assistant's reply is read as Task 9. Chat models
  answer with one task, a numbered list of tasks, or a task followed by its own answer; the reply's first
  non-empty line, without a leading "Task 9:", list number or quotes, is the candidate (``extract_task``).
  A reply that hit ``max_tokens`` before the end of that line is dropped as ``truncated`` (Self-Instruct
  drops an instruction cut off by the length limit).
* Each candidate is then checked against the filters in order (``truncated`` first, then
  ``filters.FILTER_NAMES``); ROUGE-L compares it with the seeds and every prompt kept so far (including
  those kept earlier in the same round). Kept prompts get ids ``g000001``, ``g000002``... in order.
* It stops when ``n_prompts`` are kept (surplus from the last round is cut) or after ``max_rounds`` rounds
  (reported as incomplete).

**Resumable.** Each finished round (its raw outputs and the filter decisions) is appended as one fsynced
line to ``<out>.selfinstruct.log.jsonl`` (``metareward.stages.chunks.ChunkLog``: a torn last line is cut off on
resume). A rerun replays the logged rounds without the engine and continues with the next one; since a
round's requests are a function of the seed and of the pool after the previous round, the result is the
same as an uninterrupted run (for an engine that is deterministic given request seeds). The settings are
stored beside the log (``<out>.selfinstruct.settings.json``); rerunning with different settings is an error
rather than a silent mix. The pool and the report are written atomically at the end.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metareward.engines.base import Engine, GenerationOutput, GenerationRequest, SamplingParams
from metareward.errors import InputError
from metareward.files import atomic_write_json, atomic_write_text
from metareward.pool import load_prompt_pool
from metareward.prompt_pool.filters import FILTER_NAMES, FilterSettings, PromptFilter
from metareward.records import Prompt
from metareward.seeds import named_rng
from metareward.stages.chunks import ChunkLog

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_SEEDS = DATA_DIR / "seed_prompts.jsonl"
TEMPLATE = DATA_DIR / "self_instruct_prompt.txt"
DROP_REASONS: tuple[str, ...] = ("truncated", *FILTER_NAMES)


@dataclass(frozen=True)
class SelfInstructSettings:
    """Settings of one generation run. Defaults: the paper's (docs/method.md §1.2) and Self-Instruct's filters."""

    n_prompts: int = 1000  # prompts to keep (the paper's pool has 20,000)
    seed_demos: int = 6  # demonstrations per request drawn from the seed prompts
    generated_demos: int = 2  # ... and from the prompts generated so far (seeds fill in while too few)
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 128  # tokens per generated task; a reply cut here without a task boundary is dropped
    requests_per_round: int = 32  # requests whose demonstrations see the same generated pool
    max_rounds: int | None = None  # None: 20 * ceil(n_prompts / requests_per_round) + 10
    seed: int = 0
    min_words: int = 3
    max_words: int = 150
    rouge_threshold: float = 0.7
    keywords: bool = True

    def validate(self) -> None:
        checks = [
            (self.n_prompts >= 1, "n_prompts must be >= 1"),
            (self.seed_demos >= 1, "seed_demos must be >= 1"),
            (self.generated_demos >= 0, "generated_demos must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.requests_per_round >= 1, "requests_per_round must be >= 1"),
            (self.max_rounds is None or self.max_rounds >= 1, "max_rounds must be >= 1"),
            (1 <= self.min_words <= self.max_words, "need 1 <= min_words <= max_words"),
            (0 < self.rouge_threshold <= 1, "rouge_threshold must be in (0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"self-instruct settings: {msg}")

    @property
    def rounds_limit(self) -> int:
        if self.max_rounds is not None:
            return self.max_rounds
        return 20 * math.ceil(self.n_prompts / self.requests_per_round) + 10

    @property
    def filters(self) -> FilterSettings:
        return FilterSettings(self.min_words, self.max_words, self.rouge_threshold, self.keywords)


_LEADING = re.compile(r"^\s*(?:(?:\*\*)?task\s*\d*\s*(?:\*\*)?\s*[:.)]|\d+\s*[.):]|[-*•])\s*", re.IGNORECASE)


def extract_task(raw: str, finished: bool) -> tuple[str, bool]:
    """The task in a model reply, and whether it is complete.

    A leading "Task 9:" label, list number or bullet is removed, then the reply is cut at the end of its
    first non-empty line (Self-Instruct tasks are one line; a model that lists several tasks puts one per
    line, and one that answers its own task starts the answer on a new line). Quotes around the task are
    removed and whitespace collapsed. Complete means the model stopped on its own or a line break was
    found (the text before it is whole even when the generation hit ``max_tokens`` later).
    """
    text = _LEADING.sub("", raw.strip(), count=1).strip()
    first, sep, _rest = text.partition("\n")
    text = " ".join(first.split()).strip().strip('"“”').strip()
    return text, finished or bool(sep)


def render_prompt(demos: Sequence[str], template: str | None = None) -> str:
    template = template if template is not None else TEMPLATE.read_text(encoding="utf-8")
    numbered = "".join(f"Task {i}: {d}\n" for i, d in enumerate(demos, start=1))
    return template.replace("{demonstrations}", numbered).replace("{next}", str(len(demos) + 1))


def pick_demos(seeds: Sequence[str], generated: Sequence[str], s: SelfInstructSettings, rng: random.Random) -> list[str]:
    """``seed_demos`` seeds plus ``generated_demos`` generated prompts (seeds fill in while too few are
    generated), in a random order."""
    n_gen = min(s.generated_demos, len(generated))
    n_seed = s.seed_demos + s.generated_demos - n_gen
    demos = rng.sample(list(seeds), min(n_seed, len(seeds))) + rng.sample(list(generated), n_gen)
    rng.shuffle(demos)
    return demos


def log_paths(out: Path) -> tuple[Path, Path, Path]:
    """(chunk log, settings file, report) that belong to the pool file ``out``."""
    return (
        out.with_name(out.name + ".selfinstruct.log.jsonl"),
        out.with_name(out.name + ".selfinstruct.settings.json"),
        out.with_name(out.name + ".report.json"),
    )


def generate_pool(
    out: str | Path,
    engine: Engine | Callable[[], Engine],
    settings: SelfInstructSettings = SelfInstructSettings(),
    seeds: Sequence[Prompt] | None = None,
    include_seeds: bool = False,
    template: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) self-instruct generation and write the pool JSONL ``out`` and its report.

    ``engine`` is an engine, or a factory called only if rounds remain (a finished run replays its log
    without loading a model). ``seeds`` defaults to the shipped ``seed_prompts.jsonl``. With
    ``include_seeds`` the seeds are written to the pool too (first, with their own ids). Returns the
    report (also written to ``<out>.report.json`` and suitable for printing).
    """
    settings.validate()
    out = Path(out)
    seeds = list(seeds) if seeds is not None else load_prompt_pool(DEFAULT_SEEDS)
    if len(seeds) < settings.seed_demos:
        raise InputError(f"seed prompts: need at least {settings.seed_demos}, got {len(seeds)}")
    seed_texts = [p.text for p in seeds]
    log_path, settings_path, report_path = log_paths(out)
    stored = {"settings": asdict(settings), "seeds": seed_texts, "template": template}
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous != stored:
            raise InputError(
                f"{out}: an earlier generation with different settings or seeds is logged in {log_path}; "
                f"use another output path, or delete {log_path} and {settings_path} to start over"
            )
    else:
        atomic_write_json(settings_path, stored)
    log = ChunkLog(log_path)

    filt = PromptFilter(seed_texts, settings.filters)
    kept: list[str] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    generated = 0
    made_engine: Engine | None = None
    rounds = 0
    try:
        while len(kept) < settings.n_prompts and rounds < settings.rounds_limit:
            if rounds in log.done:
                candidates = log.done[rounds]
                for c in candidates:
                    if c["reason"] is None:
                        filt.add(c["text"])
            else:
                if made_engine is None:
                    made_engine = engine if isinstance(engine, Engine) else engine()
                candidates = _run_round(rounds, kept, seed_texts, settings, made_engine, filt, template)
                log.append(rounds, candidates)
            for c in candidates:
                generated += 1
                if c["reason"] is None:
                    kept.append(c["text"])
                else:
                    dropped[c["reason"]] += 1
            rounds += 1
    finally:
        if made_engine is not None and made_engine is not engine:
            made_engine.close()

    pool = kept[: settings.n_prompts]
    lines = []
    if include_seeds:
        lines += [json.dumps({"id": p.id, "prompt": p.text}, ensure_ascii=False) for p in seeds]
    lines += [json.dumps({"id": f"g{i:06d}", "prompt": t}, ensure_ascii=False) for i, t in enumerate(pool, start=1)]
    atomic_write_text(out, "\n".join(lines) + "\n")
    report = {
        "out": str(out),
        "target": settings.n_prompts,
        "complete": len(pool) >= settings.n_prompts,
        "rounds": rounds,
        "generated": generated,
        "kept": len(kept),
        "written": len(lines),
        "dropped": dropped,
        "seeds": len(seeds),
        "include_seeds": include_seeds,
        "settings": asdict(settings),
        "log": str(log_path),
    }
    atomic_write_json(report_path, report)
    return report


def _run_round(
    round_index: int,
    kept: Sequence[str],
    seeds: Sequence[str],
    s: SelfInstructSettings,
    engine: Engine,
    filt: PromptFilter,
    template: str | None,
) -> list[dict[str, Any]]:
    """Generate one round and decide on each candidate (in request order). Kept ones join ``filt``."""
    sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    requests = []
    for i in range(s.requests_per_round):
        rng = named_rng("self-instruct", s.seed, round_index, i)
        demos = pick_demos(seeds, kept, s, rng)
        requests.append(
            GenerationRequest(
                id=f"r{round_index:05d}-{i:03d}",
                messages=({"role": "user", "content": render_prompt(demos, template)},),
                sampling=sampling,
                n=1,
                seed=s.seed * 1_000_003 + round_index * s.requests_per_round + i,
            )
        )
    outputs: dict[str, GenerationOutput] = {o.id: o for o in engine.generate(requests)}
    missing = [r.id for r in requests if r.id not in outputs]
    if missing:
        raise RuntimeError(f"self-instruct: engine returned no output for {missing[:5]}")
    candidates = []
    for r in requests:
        raw, finished = outputs[r.id].samples[0].text, outputs[r.id].samples[0].finished
        text, complete = extract_task(raw, finished)
        reason = "truncated" if not complete else filt.offer(text)
        candidates.append({"id": r.id, "raw": raw, "text": text, "finished": finished, "reason": reason})
    return candidates
