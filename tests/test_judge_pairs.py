"""Meta-judged response choice, meta-judge orderings, judge pair selection (docs/method.md §3.1-3.6) and
the pairs stage's judge pairs: skip reasons, stated-score filter, invalid scores (docs/judging.md)."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metareward.config import IterationConfig, MetaJudgeConfig
from metareward.parsing import parse_verdict
from metareward.records import Judgment, MetaJudgment, Prompt, Response
from metareward.selection.elo import (
    battle_matrix,
    battle_result,
    bradley_terry,
    evidence_l2,
    positional_weights,
)
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
from metareward.stages import judge, meta_judge, pairs

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
    np.testing.assert_allclose(out.elo, bradley_terry(B3, l2=evidence_l2(B3)), atol=0)
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
    eps = bradley_terry(B, l2=evidence_l2(B))
    if isinstance(out, Skip):
        assert out.reason in {SKIP_ELO_TIED, SKIP_CHOSEN_TOO_LONG, SKIP_SAME_SCORE}
        return
    assert out.chosen != out.rejected
    assert out.elo[out.chosen] == pytest.approx(eps.max(), abs=1e-9)
    assert out.elo[out.rejected] == pytest.approx(eps.min(), abs=1e-9)
    assert scores[out.chosen] != scores[out.rejected]
    assert cap is None or lengths[out.chosen] <= cap


@settings(max_examples=100, deadline=None)
@given(matrices, st.sampled_from([0.004, 0.05, 3.0, 40.0]))
def test_judge_pair_does_not_depend_on_the_scale_of_the_evidence(data, scale: float) -> None:
    # the penalty is scaled with ΣB, so multiplying every weight by a constant changes nothing
    B, scores, lengths = data
    out = select_judge_pair(scores, lengths, B, random.Random(0), None, require_different_scores=False)
    scaled = select_judge_pair(scores, lengths, B * scale, random.Random(0), None, require_different_scores=False)
    if isinstance(out, Skip):
        assert scaled == out
        return
    assert isinstance(scaled, JudgeChoice)
    assert (scaled.chosen, scaled.rejected) == (out.chosen, out.rejected)
    np.testing.assert_allclose(scaled.elo, out.elo, atol=1e-6)


def test_fixed_penalty_would_make_the_choice_depend_on_the_scale() -> None:
    # why the penalty is scaled: judgment 2 beat judgment 0 once and never lost. With a fixed λ = 1e-3
    # a strongly down-weighted matrix (ΣB = 0.056) ranks judgment 1 first, the same matrix at ΣB = 140
    # ranks judgment 2 first. With λ = 1e-4·ΣB both scales rank judgment 2 first.
    B = np.array([[0.0, 1.0, 0.0, 5.0], [5.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert int(np.argmax(bradley_terry(B * 0.004, l2=1e-3))) == 1
    assert int(np.argmax(bradley_terry(B * 10, l2=1e-3))) == 2
    for scale in (0.004, 10):
        out = select_judge_pair([1.0, 2.0, 3.0, 4.0], [1] * 4, B * scale, random.Random(0), None)
        assert isinstance(out, JudgeChoice) and (out.chosen, out.rejected) == (2, 3)


# ---------------------------------------------------------------- pairs stage: judge pairs (docs/judging.md)


def _j(rid: str, idx: int, score: float | None, text: str | None = None, probs=None) -> Judgment:
    return Judgment(id=f"{rid}/j{idx}", response_id=rid, prompt_id=rid.split("/")[0], index=idx,
                    text=text if text is not None else f"judgment {idx} of {rid}\nScore: {score}", score=score,
                    score_probs=probs)


def _metas(rid: str, results: dict[tuple[int, int], int]) -> list[MetaJudgment]:
    return [
        MetaJudgment(id=f"{rid}/j{a}-j{b}", prompt_id=rid.split("/")[0], response_id=rid, judgment_a=f"{rid}/j{a}",
                     judgment_b=f"{rid}/j{b}", text="", verdict={1: "A", -1: "B", 0: None}[r], result=r)
        for (a, b), r in results.items()
    ]


def _build(prompts: list[str], js: list[Judgment], metas: list[MetaJudgment], **meta_cfg):
    return pairs.build_judge_pairs(
        {p: Prompt(p, p.upper()) for p in prompts},
        {j.response_id: Response(j.response_id, j.prompt_id, 0, "R") for j in js},
        {j.id: j for j in js}, metas, IterationConfig(), MetaJudgeConfig(**meta_cfg), None, 0, 1,
    )


def test_constrained_same_score_compares_the_scores_the_texts_state() -> None:
    # constrained judgments as apply_score writes them: expected scores 3.3 and 2.2 differ, but both texts
    # end with "Score: 3" (the most likely digit): DPO would learn no score. The second judgment was cut
    # inside a code fence (as in the tiny run), so its appended line sits in the unclosed fence.
    base = [_j("p/r0", 0, None, "Careful reading."), _j("p/r0", 1, None, "Sloppy.\n```python\nprint(1)")]
    js = [judge.apply_score(base[0], [0, 0, 0.1, 0.5, 0.4, 0]),
          judge.apply_score(base[1], [0, 0.3, 0.2, 0.5, 0, 0])]
    assert [j.score for j in js] == [3.3, 2.2] and [j.text[-8:] for j in js] == ["Score: 3"] * 2
    metas = _metas("p/r0", {(0, 1): 1, (1, 0): -1})
    got, skipped, _ = _build(["p"], js, metas)
    assert got == [] and dict(skipped) == {"same_score": 1}
    js[1] = judge.apply_score(base[1], [0, 0.3, 0.6, 0.1, 0, 0])
    got, skipped, _ = _build(["p"], js, metas)
    assert [(p.chosen_id, p.rejected_id) for p in got] == [("p/r0/j0", "p/r0/j1")] and not skipped
    assert got[0].meta["stated_scores"] == [3.0, 2.0] and got[0].chosen_score == 3.3
    # free text: the stated score is the parsed one
    free = [_j("p/r0", 0, 3.0, "Careful.\nScore: 3"), _j("p/r0", 1, 3.0, "Sloppy.\nScore: 3")]
    assert _build(["p"], free, metas)[1] == {"same_score": 1}


def test_judge_pair_never_keeps_an_invalid_or_nan_score() -> None:
    nan = float("nan")
    js = [_j("p/r0", 0, 4.0), _j("p/r0", 1, nan, "Score: nan"), _j("p/r0", 2, 1.0), _j("p/r0", 3, None, "no score")]
    metas = _metas("p/r0", {(1, 0): 1, (0, 1): -1, (1, 2): 1, (2, 1): -1, (0, 2): 1, (2, 0): -1,
                            (3, 0): 1, (0, 3): -1})
    got, skipped, weights = _build(["p"], js, metas)
    assert [(p.chosen_id, p.rejected_id, p.chosen_score, p.rejected_score) for p in got] == [
        ("p/r0/j0", "p/r0/j2", 4.0, 1.0)
    ]
    assert weights == (0.5, 0.5)  # only the battle pair (0, 2) counts: one first-, one second-position win


def test_actor_pairs_ignore_nan_scores() -> None:
    rs = [Response("p/r0", "p", 0, "a"), Response("p/r1", "p", 1, "bb")]
    js = [_j("p/r0", 0, 5.0), _j("p/r0", 1, float("nan")), _j("p/r1", 0, 2.0)]
    got, skipped = pairs.build_actor_pairs([Prompt("p", "P")], rs, js, IterationConfig(), 0, 1)
    assert [(p.chosen_id, p.chosen_score, p.rejected_score) for p in got] == [("p/r0", 5.0, 2.0)]


def test_every_prompt_without_a_judge_pair_is_counted_by_reason() -> None:
    js = [
        _j("a/r0", 0, 3.0), _j("a/r0", 1, 3.0), _j("a/r1", 0, 2.0), _j("a/r1", 1, 2.0),  # zero variance
        _j("b/r0", 0, 4.0), _j("b/r0", 1, None, "no score"),  # fewer than two valid judgments
        _j("c/r0", 0, 1.0), _j("c/r0", 1, 5.0),  # meta-judged, every verdict for position A
        _j("d/r0", 0, 1.0), _j("d/r0", 1, 5.0),  # meta-judged, every verdict a tie
        _j("e/r0", 0, 1.0), _j("e/r0", 1, 5.0),  # battles planned, none recorded
        _j("f/r0", 0, 1.0), _j("f/r0", 1, 5.0),  # a pair
    ]
    metas = (_metas("c/r0", {(0, 1): 1, (1, 0): 1}) + _metas("d/r0", {(0, 1): 0, (1, 0): 0})
             + _metas("f/r0", {(0, 1): -1, (1, 0): 1}))
    got, skipped, _ = _build(["a", "b", "c", "d", "e", "f", "g"], js, metas)
    assert [p.prompt_id for p in got] == ["f"]
    assert dict(skipped) == {
        "zero_variance": 1, "fewer_than_two_valid_judgments": 2,  # b, and g (no judgments at all)
        "position_only_verdicts": 1, "no_decisive_verdict": 1, "no_meta_judgments": 1,
    }


def test_identical_judgments_reason() -> None:
    # variance > 0 needs different scores, so identical texts can only come with a stated score that
    # differs from the recorded one (e.g. records written by another tool); the reason is still named
    js = [_j("p/r0", 0, 1.0, "Same text."), _j("p/r0", 1, 5.0, "Same text.")]
    _, skipped, _ = _build(["p"], js, [])
    assert dict(skipped) == {"identical_judgments": 1}


# ---------------------------------------------------------------- constrained probabilities (docs/judging.md)


@pytest.mark.parametrize(
    "probs",
    [[float("nan")] * 6, [0.1, 0.1, 0.1, 0.1, 0.1, float("inf")], [0.1] * 6, [0.5, 0.5], [-0.5, 0.5, 0.5, 0.5, 0, 0]],
)
def test_apply_score_rejects_unusable_probabilities(probs: list[float]) -> None:
    j = _j("p/r0", 0, None, "Good.\nScore: 4")
    with pytest.warns(RuntimeWarning, match="p/r0/j0"):
        out = judge.apply_score(j, probs)
    assert out.score is None and out.score_probs is None and out.text == j.text
    assert "NaN" not in json.dumps(dataclasses.asdict(out))


@pytest.mark.parametrize("probs", [[float("nan"), 0.5], [0.2, 0.2], [1.0]])
def test_apply_verdict_rejects_unusable_probabilities(probs: list[float]) -> None:
    m = _metas("p/r0", {(0, 1): 0})[0]
    with pytest.warns(RuntimeWarning, match="p/r0/j0-j1"):
        out = meta_judge.apply_verdict(m, probs)
    assert (out.verdict, out.result, out.verdict_probs) == (None, 0, None)
    assert "NaN" not in json.dumps(dataclasses.asdict(out))
