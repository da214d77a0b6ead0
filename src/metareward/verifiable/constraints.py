"""Verifiable-instruction prompts: a task plus one to three constraints that code can check.

A prompt is a task (a question or request from the shipped seed pool, ``data/seed_prompts.jsonl``) followed
by constraint sentences in our own words; each constraint is an IFEval instruction id of ``if-verifiable``
with its arguments (``Constraint``), so any response to the prompt can be checked
(``metareward.verifiable.checks``). No prompt comes from IFEval's or IFBench's sets: those stay
independent checks of what a model learns.

The catalogue (``CATALOGUE``) holds constraints a small model can satisfy within a short answer. Each has a
*group*; a prompt takes at most one constraint per group (two length limits, or JSON and a quoted
answer, would contradict each other), and JSON output excludes the constraints listed in ``_EXCLUDES``.

``build_sets`` splits the tasks into train and held-out tasks (disjoint, by seed), then gives each train
task ``variants`` constraint sets and each held-out task one. Everything is drawn from one
``random.Random(seed)``, so a seed gives the same files byte for byte; the shipped ``builtin:`` sets
(``verifiable_train``, ``verifiable_heldout``) are ``build_sets(seed=0)`` (tests/test_verifiable.py
rebuilds them and compares).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.records import iter_json_objects


@dataclass(frozen=True)
class Constraint:
    """One checkable instruction: an IFEval instruction id of ``if-verifiable`` and its arguments."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kwargs": self.kwargs}


@dataclass(frozen=True)
class Kind:
    """A constraint of the catalogue: its group, how its arguments are drawn, and how it is phrased."""

    name: str
    group: str
    instruction: str
    draw: Callable[[random.Random], dict[str, Any]]
    text: Callable[[dict[str, Any]], str]


KEYWORDS = ("river", "window", "garden", "journey", "lantern", "signal", "harvest", "bridge", "compass",
            "meadow", "engine", "puzzle", "mirror", "forest", "candle", "anchor", "ladder", "ocean")
END_PHRASES = ("Is there anything else I can help with?", "That is all.", "Hope this helps.",
               "Let me know if you have more questions.")
FORBIDDEN = ("very", "really", "important", "example", "however", "also", "just", "many")


def _quoted(words: Sequence[str]) -> str:
    return " and ".join(f"'{w}'" for w in words)


CATALOGUE: tuple[Kind, ...] = (
    Kind("lowercase", "case", "change_case:english_lowercase", lambda r: {},
         lambda a: "Write your entire response in lowercase letters only; no capital letters are allowed."),
    Kind("no_comma", "punctuation", "punctuation:no_comma", lambda r: {},
         lambda a: "Do not use any commas in your response."),
    Kind("words_below", "length", "length_constraints:number_words",
         lambda r: {"num_words": r.choice((30, 50, 70)), "relation": "less than"},
         lambda a: f"Answer in fewer than {a['num_words']} words."),
    Kind("words_at_least", "length", "length_constraints:number_words",
         lambda r: {"num_words": r.choice((20, 40)), "relation": "at least"},
         lambda a: f"Your answer must be at least {a['num_words']} words long."),
    Kind("sentences_below", "length", "length_constraints:number_sentences",
         lambda r: {"num_sentences": r.choice((3, 4, 5)), "relation": "less than"},
         lambda a: f"Use fewer than {a['num_sentences']} sentences."),
    Kind("keywords", "content", "keywords:existence",
         lambda r: {"keywords": r.sample(KEYWORDS, r.choice((1, 2)))},
         lambda a: f"Include the word{'s' if len(a['keywords']) > 1 else ''} {_quoted(a['keywords'])} "
                   "in your response."),
    Kind("forbidden", "content", "keywords:forbidden_words",
         lambda r: {"forbidden_words": r.sample(FORBIDDEN, 2)},
         lambda a: f"Do not use the words {_quoted(a['forbidden_words'])}."),
    Kind("end_phrase", "frame", "startend:end_checker",
         lambda r: {"end_phrase": r.choice(END_PHRASES)},
         lambda a: f"Finish your response with the exact phrase \"{a['end_phrase']}\" and nothing after it."),
    Kind("postscript", "frame", "detectable_content:postscript",
         lambda r: {"postscript_marker": "P.S."},
         lambda a: "At the end of your response, add a postscript starting with P.S."),
    Kind("quotation", "frame", "startend:quotation", lambda r: {},
         lambda a: "Wrap your entire response in double quotation marks."),
    Kind("json", "frame", "detectable_format:json_format", lambda r: {},
         lambda a: "Write your entire output as valid JSON, optionally inside a ```json code block."),
    Kind("title", "structure", "detectable_format:title", lambda r: {},
         lambda a: "Give your answer a title wrapped in double angular brackets, such as <<my title>>."),
    Kind("bullets", "structure", "detectable_format:number_bullet_lists",
         lambda r: {"num_bullets": r.choice((2, 3, 4))},
         lambda a: f"Your answer must contain exactly {a['num_bullets']} bullet points in markdown, "
                   "each starting with \"* \"."),
)
BY_NAME = {k.name: k for k in CATALOGUE}
_EXCLUDES = {"json": {"structure", "punctuation", "case"}}
"""Groups a kind rules out beyond its own (valid JSON needs its quotes, commas between keys, true/false)."""

COUNT_WEIGHTS = {1: 0.45, 2: 0.4, 3: 0.15}
"""How many constraints a prompt gets (weights): mostly one or two, as a 135M model can satisfy."""


def draw_constraints(rng: random.Random) -> list[tuple[Kind, dict[str, Any]]]:
    """One to three catalogue kinds with their arguments, at most one per group, respecting ``_EXCLUDES``."""
    n = rng.choices(list(COUNT_WEIGHTS), weights=list(COUNT_WEIGHTS.values()))[0]
    chosen: list[tuple[Kind, dict[str, Any]]] = []
    blocked: set[str] = set()
    for kind in rng.sample(CATALOGUE, len(CATALOGUE)):
        if len(chosen) == n:
            break
        excluded = _EXCLUDES.get(kind.name, set())
        if kind.group in blocked or excluded & {k.group for k, _ in chosen}:
            continue
        chosen.append((kind, kind.draw(rng)))
        blocked |= {kind.group} | excluded
    return chosen


def prompt_record(pid: str, task: str, drawn: Sequence[tuple[Kind, dict[str, Any]]]) -> dict[str, Any]:
    """A prompt-pool line: the task, then its constraint sentences; the constraints kept for checking."""
    text = " ".join([task.strip(), *(k.text(a) for k, a in drawn)])
    return {"id": pid, "prompt": text, "task": task.strip(),
            "constraints": [Constraint(k.instruction, a).to_json() for k, a in drawn]}


def build_sets(
    tasks: Sequence[str], seed: int = 0, heldout_tasks: int = 120, variants: int = 2
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out prompt records over disjoint tasks (``heldout_tasks`` of them held out)."""
    if not 0 < heldout_tasks < len(tasks):
        raise InputError(f"heldout_tasks: must be in (0, {len(tasks)}) for {len(tasks)} tasks, got {heldout_tasks}")
    rng = random.Random(seed)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    held, train = order[:heldout_tasks], order[heldout_tasks:]
    heldout = [prompt_record(f"vif-h{n:04d}", tasks[t], draw_constraints(rng)) for n, t in enumerate(held)]
    train_set, seen = [], set()
    for v in range(variants):
        for n, t in enumerate(train):
            record = prompt_record(f"vif-t{n:04d}-{v}", tasks[t], draw_constraints(rng))
            while record["prompt"] in seen:  # a task's variants differ (a pool keeps one of equal prompts)
                record = prompt_record(record["id"], tasks[t], draw_constraints(rng))
            seen.add(record["prompt"])
            train_set.append(record)
    return train_set, heldout


def seed_tasks() -> list[str]:
    """The tasks: the shipped seed prompts (``builtin:seed_prompts``), in file order."""
    from metareward.pool import load_prompt_pool

    return [p.text for p in load_prompt_pool("builtin:seed_prompts")]


def write_sets(out_dir: str | Path, seed: int = 0, heldout_tasks: int = 120, variants: int = 2) -> tuple[Path, Path]:
    """Write ``verifiable_train.jsonl`` and ``verifiable_heldout.jsonl`` into ``out_dir``."""
    train, heldout = build_sets(seed_tasks(), seed, heldout_tasks, variants)
    out = Path(out_dir)
    paths = out / "verifiable_train.jsonl", out / "verifiable_heldout.jsonl"
    for path, rows in zip(paths, (train, heldout), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(dumps(rows), encoding="utf-8")
        os.replace(tmp, path)
    return paths


def load_constraints(path: str | Path) -> dict[str, list[Constraint]]:
    """Prompt id → its constraints, from a prompt file whose lines carry ``constraints`` (as written by
    ``write_sets``). A line without constraints, or with a malformed one, is an ``InputError`` naming the
    file, line and field: a verifier cannot score a prompt it has nothing to check against."""
    from metareward.pool import resolve_pool_path

    resolved = resolve_pool_path(path)
    if not resolved.is_file():
        raise InputError(f"{path}: prompts file not found")
    from metareward.verifiable.checks import registry

    known = registry("ifeval")
    out: dict[str, list[Constraint]] = {}
    for where, lineno, obj in iter_json_objects(resolved):
        pid = obj.get("id", f"p{lineno:06d}")
        items = obj.get("constraints")
        if not isinstance(items, list) or not items:
            raise InputError(f"{where}: field 'constraints': a non-empty list is required for a verifier judge")
        cons = []
        for i, c in enumerate(items):
            if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not isinstance(c.get("kwargs", {}), dict):
                raise InputError(f"{where}: field 'constraints[{i}]': expected {{\"id\": str, \"kwargs\": object}}")
            if c["id"] not in known:
                raise InputError(f"{where}: field 'constraints[{i}].id': unknown instruction {c['id']!r}")
            cons.append(Constraint(c["id"], dict(c.get("kwargs", {}))))
        out[pid] = cons
    return out


def dumps(rows: Sequence[dict[str, Any]]) -> str:
    """The JSONL text of ``rows`` (one compact object a line), as ``write_sets`` writes it."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
