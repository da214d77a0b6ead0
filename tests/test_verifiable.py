"""Verifiable-instruction prompts: the generator, the shipped sets, the checks and the verifier's score."""

from __future__ import annotations

import json
import random

import pytest

from metareward.errors import InputError
from metareward.pool import load_prompt_pool, resolve_pool_path
from metareward.verifiable.constraints import (
    _EXCLUDES,
    BY_NAME,
    Constraint,
    build_sets,
    draw_constraints,
    dumps,
    load_constraints,
    seed_tasks,
)
from metareward.verifiable.verify import verdict_text, verifier_score, verify

pytest.importorskip("if_verifiable")

LOWER, NO_COMMA = Constraint("change_case:english_lowercase"), Constraint("punctuation:no_comma")
UNDER_10 = Constraint("length_constraints:number_words", {"num_words": 10, "relation": "less than"})
KEYWORD = Constraint("keywords:existence", {"keywords": ["river"]})


def test_shipped_sets_are_build_sets_of_seed_0():
    """The builtin files are exactly what the generator writes for seed 0 (so they can be rebuilt)."""
    train, heldout = build_sets(seed_tasks(), seed=0)
    assert resolve_pool_path("builtin:verifiable_train").read_text(encoding="utf-8") == dumps(train)
    assert resolve_pool_path("builtin:verifiable_heldout").read_text(encoding="utf-8") == dumps(heldout)
    assert (len(train), len(heldout)) == (340, 120)
    assert len(load_prompt_pool("builtin:verifiable_train")) == 340


def test_train_and_heldout_tasks_are_disjoint_and_deterministic():
    tasks = seed_tasks()
    train, heldout = build_sets(tasks, seed=3, heldout_tasks=50, variants=2)
    assert {r["task"] for r in train}.isdisjoint({r["task"] for r in heldout})
    assert len({r["task"] for r in heldout}) == 50 and len({r["task"] for r in train}) == len(tasks) - 50
    assert build_sets(tasks, seed=3, heldout_tasks=50, variants=2) == (train, heldout)
    assert build_sets(tasks, seed=4, heldout_tasks=50, variants=2) != (train, heldout)
    assert len({r["id"] for r in train + heldout}) == len(train) + len(heldout)
    with pytest.raises(InputError, match="heldout_tasks"):
        build_sets(tasks, heldout_tasks=len(tasks))


def test_no_prompt_is_an_ifeval_prompt():
    from metareward.evaluation.suites.data import ifeval_rows

    ifeval = {r["prompt"].strip() for r in ifeval_rows()}
    train, heldout = build_sets(seed_tasks(), seed=0)
    assert not ({r["prompt"] for r in train + heldout} | {r["task"] for r in train + heldout}) & ifeval


def test_drawn_constraints_respect_groups_and_exclusions():
    rng = random.Random(7)
    for _ in range(500):
        drawn = draw_constraints(rng)
        groups = [k.group for k, _ in drawn]
        assert 1 <= len(drawn) <= 3 and len(groups) == len(set(groups))
        for kind, _ in drawn:
            assert not _EXCLUDES.get(kind.name, set()) & (set(groups) - {kind.group})


def test_every_catalogue_kind_is_checkable_and_phrased():
    """Each kind's drawn arguments build a checker, and a response written to satisfy it passes."""
    satisfying = {
        "lowercase": "this answer is written entirely in lowercase letters for the reader today.",
        "no_comma": "No commas here at all.",
        "words_below": "Short answer.",
        "words_at_least": " ".join(["word"] * 45),
        "sentences_below": "One sentence only.",
        "forbidden": "Nothing forbidden here.",
        "postscript": "Answer.\n\nP.S. one more thing.",
        "quotation": '"A quoted answer."',
        "json": '{"answer": "yes"}',
        "title": "<<A Title>>\nBody.",
    }
    rng = random.Random(0)
    for kind in BY_NAME.values():
        args = kind.draw(rng)
        assert kind.text(args).endswith((".", '"', ">>.")), kind.name
        text = satisfying.get(kind.name)
        if kind.name == "keywords":
            text = "We talk about " + " and ".join(args["keywords"]) + "."
        elif kind.name == "end_phrase":
            text = "Answer. " + args["end_phrase"]
        elif kind.name == "bullets":
            text = "\n".join(f"* point {i}" for i in range(args["num_bullets"]))
        v = verify("p", "prompt", [Constraint(kind.instruction, args)], text)
        assert v.error is None and v.strict == (True,), (kind.name, args, v)


def test_verify_counts_and_the_verifier_score():
    v = verify("p", "x", [LOWER, NO_COMMA, UNDER_10], "Hello, there friend")
    assert v.strict == (False, False, True) and v.satisfied == 1 and v.total == 3 and not v.all_strict
    assert verifier_score(v) == pytest.approx(5 / 3, abs=1e-6)
    assert verdict_text([LOWER, NO_COMMA, UNDER_10], v).splitlines() == [
        "Constraints satisfied: 1 of 3.",
        "Failed: change_case:english_lowercase, punctuation:no_comma.",
        "Score: 1.66667",
    ]
    full = verify("p", "x", [NO_COMMA, UNDER_10, KEYWORD], "the river runs")
    assert full.all_strict and verifier_score(full) == 5.0
    assert verifier_score(verify("p", "x", [NO_COMMA, KEYWORD], "")) == 0.0  # empty: fails everything


def test_loose_is_at_least_strict():
    v = verify("p", "x", [Constraint("startend:quotation")], 'Sure!\n"quoted answer"\nHope it helps')
    assert v.strict == (False,) and v.loose == (True,)


def test_case_check_is_deterministic():
    """langdetect samples; the verifier seeds it, so the same response always gets the same score."""
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    assert len({verify("p", "x", [LOWER], text).strict for _ in range(20)}) == 1


def test_a_failing_checker_is_an_error_not_a_score():
    bad = Constraint("length_constraints:number_words", {"num_words": "ten", "relation": "bogus"})
    v = verify("p", "x", [bad], "hi")
    assert v.error is not None and v.strict == ()
    with pytest.raises(ValueError, match="no constraints"):
        verify("p", "x", [], "hi")


def test_load_constraints_reads_and_names_bad_lines(tmp_path):
    good = {"id": "a", "prompt": "Say hi.", "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert load_constraints(path) == {"a": [NO_COMMA]}
    for line, message in [
        ({"id": "b", "prompt": "Say hi."}, "p.jsonl:2: field 'constraints'"),
        ({"id": "b", "prompt": "x", "constraints": []}, "p.jsonl:2: field 'constraints'"),
        ({"id": "b", "prompt": "x", "constraints": [{"id": "nope"}]}, r"p.jsonl:2: field 'constraints\[0\].id'"),
        ({"id": "b", "prompt": "x", "constraints": ["x"]}, r"p.jsonl:2: field 'constraints\[0\]'"),
    ]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(InputError, match=message):
            load_constraints(path)
    with pytest.raises(InputError, match="not found"):
        load_constraints(tmp_path / "missing.jsonl")
