"""Meta-judged response choice, meta-judge orderings and judge pair selection (spec §3.1, §3.2, §3.6)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metareward.parsing import parse_verdict
from metareward.selection.elo import battle_matrix, battle_result, bradley_terry, positional_weights
from metareward.selection.judge_pairs import (
    SKIP_CHOSEN_TOO_LONG,
    SKIP_ELO_TIED,
    SKIP_FEWER_THAN_TWO_JUDGMENTS,
    SKIP_SAME_SCORE,
    JudgeChoice,
    Skip,
    meta_judge_orderings,
    select_judge_pair,
    select_meta_response,
)
from metareward.selection.length_control import Skip as LengthControlSkip

# ---------------------------------------------------------------- select_meta_response


def test_skip_type_is_shared() -> None:
    assert Skip is LengthControlSkip


def test_highest_variance_response() -> None:
    scores = {
        "r0": [4, 4, 4],  # variance 0
        "r1": [3, 5, 4, None],  # valid [3, 5, 4]: population variance 2/3
        "r2": [1, 5],  # variance 4 (population, ddof=0; the sample variance would be 8)
        "r3": [5],  # one valid score: not eligible
    }
    assert select_meta_response(scores, random.Random(0)) == "r2"


def test_population_variance_is_used() -> None:
    # [0, 3] -> 2.25 (ddof=1: 4.5) vs [0, 2, 4, 0, 2, 4] -> 16/6 = 2.67 (ddof=1: 16/5 = 3.2):
    # ddof=0 picks "b", ddof=1 would pick "a"
    assert select_meta_response({"a": [0, 3], "b": [0, 2, 4, 0, 2, 4]}, random.Random(0)) == "b"


def test_invalid_scores_ignored() -> None:
    nan = float("nan")
    scores = {"a": [nan, 5, None, 5], "b": [4, None, 2]}
    assert select_meta_response(scores, random.Random(0)) == "b"


@pytest.mark.parametrize(
    "scores",
    [
        {},
        {"a": [4, 4], "b": [5, 5, 5]},  # every variance is 0
        {"a": [1], "b": [None, 5], "c": []},  # nothing has two valid scores
        {"a": [0.1, 0.1, 0.1], "b": [4.7] * 11},  # zero up to float noise
    ],
)
def test_no_meta_response(scores: dict) -> None:
    assert select_meta_response(scores, random.Random(0)) is None


def test_variance_ties_broken_by_rng() -> None:
    scores = {"b": [2, 4], "a": [1, 3], "c": [3, 3]}  # a and b both have variance 1
    seen = {select_meta_response(scores, random.Random(seed)) for seed in range(50)}
    assert seen == {"a", "b"}
    # independent of the mapping's order: same seed, same answer
    reordered = {"a": [1, 3], "c": [3, 3], "b": [2, 4]}
    for seed in range(20):
        assert select_meta_response(scores, random.Random(seed)) == select_meta_response(
            reordered, random.Random(seed)
        )


# ---------------------------------------------------------------- meta_judge_orderings


def test_orderings_exact() -> None:
    assert meta_judge_orderings(["x", "y", "z"]) == [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]


def test_orderings_skip_identical_texts() -> None:
    assert meta_judge_orderings(["x", "y", "x", "z"]) == [
        (0, 1), (1, 0), (0, 3), (3, 0), (1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2),
    ]  # fmt: skip
    assert meta_judge_orderings(["same", "same"]) == []
    assert meta_judge_orderings(["x"]) == []
    assert meta_judge_orderings([]) == []
    # byte-for-byte: whitespace differences count as different
    assert meta_judge_orderings(["Score: 4", "Score: 4 "]) == [(0, 1), (1, 0)]


def test_orderings_count_for_eleven_judgments() -> None:
    assert len(meta_judge_orderings([f"j{i}" for i in range(11)])) == 110  # C(11, 2)·2


# ---------------------------------------------------------------- select_judge_pair


B3 = np.array(
    [
        [0.0, 1.0, 0.25],
        [0.0, 0.0, 0.0],
        [0.25, 0.75, 0.0],
    ]
)


def test_judge_pair_from_battle_matrix() -> None:
    # judgment 0 wins 1.25 and loses 0.25, judgment 1 never wins, judgment 2 wins 1.0 and loses 0.25
    out = select_judge_pair([4.0, 2.0, 3.0], [300, 200, 250], B3, random.Random(0), max_chosen_length=1100)
    assert isinstance(out, JudgeChoice)
    assert (out.chosen, out.rejected) == (0, 1)
    np.testing.assert_allclose(out.elo, bradley_terry(B3), atol=0)
    assert out.elo[0] > out.elo[2] > out.elo[1]


def test_end_to_end_from_meta_judge_texts() -> None:
    judgments = ["Thorough. Score: 4", "Lazy. Score: 2", "Fair. Score: 3"]
    orderings = meta_judge_orderings(judgments)
    # meta-judge outputs for the orderings (0,1),(1,0),(0,2),(2,0),(1,2),(2,1)
    outputs = [
        "A is better.\nWinner: Judgment A",
        "**Winner:** [Judgement B]",
        "Winner: Judgement A",
        "Winner: Judgment A",  # position-inconsistent with the previous one: still counts
        "winner: judgment b",
        "Winner: [Judgement A | Judgement B]",  # template echoed: parse error -> 0
    ]
    results = [battle_result(parse_verdict(t)) for t in outputs]
    assert results == [1, -1, 1, 1, -1, 0]
    w1, w2 = positional_weights(results)  # win_1st = 3, win_2nd = 2
    assert (w1, w2) == (pytest.approx(0.4), pytest.approx(0.6))
    B = battle_matrix(3, [(a, b, r) for (a, b), r in zip(orderings, results)], w1, w2)
    np.testing.assert_allclose(B, [[0.0, 1.0, 0.4], [0.0, 0.0, 0.0], [0.4, 0.6, 0.0]])
    out = select_judge_pair([4.0, 2.0, 3.0], [len(j) for j in judgments], B, random.Random(0), 1100)
    assert isinstance(out, JudgeChoice) and (out.chosen, out.rejected) == (0, 1)


def test_chosen_too_long() -> None:
    args = ([4.0, 2.0, 3.0], [300, 200, 250], B3, random.Random(0))
    assert select_judge_pair(*args, max_chosen_length=299) == Skip(SKIP_CHOSEN_TOO_LONG)
    assert isinstance(select_judge_pair(*args, max_chosen_length=300), JudgeChoice)  # inclusive
    assert isinstance(select_judge_pair(*args, max_chosen_length=None), JudgeChoice)
    # only the chosen judgment's length matters
    assert isinstance(
        select_judge_pair([4.0, 2.0, 3.0], [300, 5000, 250], B3, random.Random(0), 1000), JudgeChoice
    )


def test_same_score_filter() -> None:
    args = ([4.0, 4.0, 3.0], [300, 200, 250], B3, random.Random(0), None)
    assert select_judge_pair(*args) == Skip(SKIP_SAME_SCORE)
    out = select_judge_pair(*args, require_different_scores=False)
    assert isinstance(out, JudgeChoice) and (out.chosen, out.rejected) == (0, 1)


def test_elo_tied() -> None:
    assert select_judge_pair([4.0, 2.0], [10, 10], np.zeros((2, 2)), random.Random(0), None) == Skip(
        SKIP_ELO_TIED
    )
    symmetric = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    assert select_judge_pair([1.0, 2.0, 3.0], [1, 1, 1], symmetric, random.Random(0), None) == Skip(
        SKIP_ELO_TIED
    )


def test_fewer_than_two_judgments() -> None:
    assert select_judge_pair([4.0], [10], np.zeros((1, 1)), random.Random(0), None) == Skip(
        SKIP_FEWER_THAN_TWO_JUDGMENTS
    )
    assert select_judge_pair([], [], np.zeros((0, 0)), random.Random(0), None) == Skip(
        SKIP_FEWER_THAN_TWO_JUDGMENTS
    )


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        select_judge_pair([4.0, 2.0], [10], np.zeros((2, 2)), random.Random(0), None)
    with pytest.raises(ValueError):
        select_judge_pair([4.0, 2.0], [10, 10], np.zeros((3, 3)), random.Random(0), None)


def test_elo_ties_broken_by_rng() -> None:
    # 0 and 1 each beat 2 and 3 once: ε0 = ε1 (max) and ε2 = ε3 (min)
    B = np.zeros((4, 4))
    for w in (0, 1):
        for loser in (2, 3):
            B[w, loser] = 1.0
    scores, lengths = [5.0, 4.0, 2.0, 1.0], [10, 10, 10, 10]
    seen = set()
    for seed in range(60):
        out = select_judge_pair(scores, lengths, B, random.Random(seed), None)
        assert out == select_judge_pair(scores, lengths, B, random.Random(seed), None)
        assert isinstance(out, JudgeChoice)
        seen.add((out.chosen, out.rejected))
    assert seen == {(0, 2), (0, 3), (1, 2), (1, 3)}


matrices = st.integers(min_value=2, max_value=8).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, n), elements=st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 4.5]), min_size=n, max_size=n),
        st.lists(st.integers(1, 2000), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(matrices, st.integers(0, 2**32 - 1), st.one_of(st.none(), st.integers(1, 2000)))
def test_judge_pair_properties(data, seed: int, cap: int | None) -> None:
    B, scores, lengths = data
    out = select_judge_pair(scores, lengths, B, random.Random(seed), cap)
    eps = bradley_terry(B)
    if isinstance(out, Skip):
        assert out.reason in {SKIP_ELO_TIED, SKIP_CHOSEN_TOO_LONG, SKIP_SAME_SCORE}
        return
    assert out.chosen != out.rejected
    assert out.elo[out.chosen] == pytest.approx(eps.max(), abs=1e-9)
    assert out.elo[out.rejected] == pytest.approx(eps.min(), abs=1e-9)
    assert scores[out.chosen] != scores[out.rejected]
    assert cap is None or lengths[out.chosen] <= cap
