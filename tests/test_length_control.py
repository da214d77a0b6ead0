"""Length-controlled actor pair selection (docs/method.md §2.4)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.selection.length_control import (
    SKIP_ALL_SCORES_EQUAL,
    SKIP_CHOSEN_NOT_BETTER,
    SKIP_CHOSEN_TOO_LONG,
    SKIP_FEWER_THAN_TWO,
    SKIP_SAME_RESPONSE,
    TOL,
    ActorChoice,
    ScoredResponse,
    Skip,
    select_actor_pair,
)


def rs(*pairs: tuple[float, int]) -> list[ScoredResponse]:
    return [ScoredResponse(id=f"r{i}", score=s, length=n) for i, (s, n) in enumerate(pairs)]


WORKED = rs((5.0, 1900), (4.2, 1500), (3.5, 1200), (2.5, 2400), (2.0, 1800))


def test_spec_worked_example() -> None:
    # top tier [0.68·5 + 0.32·2, 5] = [4.04, 5] -> {5.0/1900, 4.2/1500}: shortest is 4.2/1500
    # bottom tier [2, 0.68·2 + 0.32·5] = [2, 2.96] -> {2.5/2400, 2.0/1800}: longest is 2.5/2400
    out = select_actor_pair(WORKED, 0.32, random.Random(0))
    assert out == ActorChoice(chosen=WORKED[1], rejected=WORKED[3])
    assert (out.chosen.score, out.chosen.length) == (4.2, 1500)
    assert (out.rejected.score, out.rejected.length) == (2.5, 2400)


def test_rho_zero_is_argmax_argmin() -> None:
    out = select_actor_pair(WORKED, 0.0, random.Random(0))
    assert out == ActorChoice(chosen=WORKED[0], rejected=WORKED[4])
    assert (out.chosen.score, out.rejected.score) == (5.0, 2.0)


def test_input_order_does_not_matter() -> None:
    shuffled = list(reversed(WORKED))
    out = select_actor_pair(shuffled, 0.32, random.Random(0))
    assert out == ActorChoice(chosen=WORKED[1], rejected=WORKED[3])


def test_rho_one_takes_shortest_and_longest_overall() -> None:
    # both tiers are everything: shortest = 3.5/1200, longest = 2.5/2400
    out = select_actor_pair(WORKED, 1.0, random.Random(0))
    assert out == ActorChoice(chosen=WORKED[2], rejected=WORKED[3])


def test_overlapping_tiers_inverted_pair_is_skipped() -> None:
    # rho = 0.8: top tier [2.6, 5] (shortest: 3.0/100), bottom tier [2, 4.4] (longest: 4.0/9000)
    responses = rs((5.0, 500), (3.0, 100), (4.0, 9000), (2.0, 50))
    assert select_actor_pair(responses, 0.8, random.Random(0)) == Skip(SKIP_CHOSEN_NOT_BETTER)


def test_same_response_in_both_tiers_is_skipped() -> None:
    # rho = 0.5: both tiers contain the midpoint 3.0, which is the shortest and the longest
    responses = rs((4.0, 500), (3.0, 100), (2.0, 50))
    # top tier [3, 4] = {4.0/500, 3.0/100} -> 3.0/100; bottom tier [2, 3] = {3.0/100, 2.0/50} -> 3.0/100
    assert select_actor_pair(responses, 0.5, random.Random(0)) == Skip(SKIP_SAME_RESPONSE)


def test_all_scores_equal_skip() -> None:
    responses = rs((4.0, 100), (4.0, 2000), (4.0, 500))
    for rho in (0.0, 0.32, 1.0):
        assert select_actor_pair(responses, rho, random.Random(0)) == Skip(SKIP_ALL_SCORES_EQUAL)
    # equal up to float noise of a mean
    noisy = rs((sum([4.1, 4.2, 4.3]) / 3, 10), (sum([4.3, 4.2, 4.1]) / 3, 20))
    assert select_actor_pair(noisy, 0.32, random.Random(0)) == Skip(SKIP_ALL_SCORES_EQUAL)


def test_fewer_than_two_skip() -> None:
    assert select_actor_pair([], 0.32, random.Random(0)) == Skip(SKIP_FEWER_THAN_TWO)
    assert select_actor_pair(rs((5.0, 100)), 0.0, random.Random(0)) == Skip(SKIP_FEWER_THAN_TWO)


def test_max_chosen_length_filter() -> None:
    assert select_actor_pair(WORKED, 0.32, random.Random(0), max_chosen_length=1499) == Skip(
        SKIP_CHOSEN_TOO_LONG
    )
    # inclusive bound
    out = select_actor_pair(WORKED, 0.32, random.Random(0), max_chosen_length=1500)
    assert isinstance(out, ActorChoice) and out.chosen is WORKED[1]
    # iteration-1 style: rho = 0 with a 2,500-char cap; the argmax (1,900 chars) passes, 2,600 fails
    assert isinstance(select_actor_pair(WORKED, 0.0, random.Random(0), max_chosen_length=2500), ActorChoice)
    long_best = rs((5.0, 2600), (2.0, 100))
    assert select_actor_pair(long_best, 0.0, random.Random(0), max_chosen_length=2500) == Skip(
        SKIP_CHOSEN_TOO_LONG
    )


def test_length_ties_prefer_score_then_random() -> None:
    # top tier [4.04, 5]: 5.0/1000 and 4.5/1000 tie on length -> higher score 5.0
    # bottom tier [2, 2.96]: 2.0/3000 and 2.9/3000 tie on length -> lower score 2.0
    responses = rs((4.5, 1000), (5.0, 1000), (2.9, 3000), (2.0, 3000), (3.5, 10))
    out = select_actor_pair(responses, 0.32, random.Random(0))
    assert out == ActorChoice(chosen=responses[1], rejected=responses[3])


def test_full_ties_broken_by_rng_reproducibly() -> None:
    # two top responses identical in score and length, two bottom ones likewise
    responses = rs((5.0, 1000), (5.0, 1000), (2.0, 3000), (2.0, 3000))
    seen = set()
    for seed in range(50):
        a = select_actor_pair(responses, 0.32, random.Random(seed))
        b = select_actor_pair(responses, 0.32, random.Random(seed))
        assert a == b  # same seed, same answer
        assert isinstance(a, ActorChoice)
        seen.add((a.chosen.id, a.rejected.id))
    assert seen == {("r0", "r2"), ("r0", "r3"), ("r1", "r2"), ("r1", "r3")}


def test_rho_zero_ties_at_max_are_random_not_shortest() -> None:
    responses = rs((5.0, 3000), (5.0, 100), (1.0, 50))
    chosen = {select_actor_pair(responses, 0.0, random.Random(s)).chosen.id for s in range(50)}
    assert chosen == {"r0", "r1"}


def test_tier_boundaries_tolerate_rounding() -> None:
    # 0.9·2.0 + 0.1·1.0 evaluates to 1.9000000000000001 > 1.9: 1.9 must still be in the top tier
    assert (1 - 0.1) * 2.0 + 0.1 * 1.0 > 1.9
    responses = rs((2.0, 1000), (1.9, 10), (1.0, 500))
    out = select_actor_pair(responses, 0.1, random.Random(0))
    assert out == ActorChoice(chosen=responses[1], rejected=responses[2])
    # 0.7·3.0 + 0.3·5.0 evaluates to 3.5999999999999996 < 3.6: 3.6 must still be in the bottom tier
    assert (1 - 0.3) * 3.0 + 0.3 * 5.0 < 3.6
    responses = rs((5.0, 1000), (3.6, 9000), (3.0, 500))
    out = select_actor_pair(responses, 0.3, random.Random(0))
    assert out == ActorChoice(chosen=responses[0], rejected=responses[1])


@pytest.mark.parametrize("rho", [-0.01, 1.01, float("nan")])
def test_rho_out_of_range(rho: float) -> None:
    with pytest.raises(ValueError):
        select_actor_pair(WORKED, rho, random.Random(0))


def test_non_finite_score_rejected() -> None:
    with pytest.raises(ValueError):
        select_actor_pair(rs((float("nan"), 10), (3.0, 10)), 0.0, random.Random(0))


# ---------------------------------------------------------------- properties

scores_q = st.integers(min_value=0, max_value=20).map(lambda k: k / 4)  # 0, 0.25, ..., 5
responses_st = st.lists(
    st.tuples(scores_q, st.integers(min_value=1, max_value=5000)), min_size=0, max_size=9
).map(lambda xs: rs(*xs))


@settings(max_examples=300, deadline=None)
@given(responses_st, st.floats(min_value=0.0, max_value=1.0), st.integers(0, 2**32 - 1))
def test_properties(responses: list[ScoredResponse], rho: float, seed: int) -> None:
    out = select_actor_pair(responses, rho, random.Random(seed))
    if isinstance(out, Skip):
        assert out.reason in {
            SKIP_FEWER_THAN_TWO,
            SKIP_ALL_SCORES_EQUAL,
            SKIP_SAME_RESPONSE,
            SKIP_CHOSEN_NOT_BETTER,
        }
        if len(responses) >= 2 and len({r.score for r in responses}) >= 2:
            # below 0.5 the tiers are disjoint (scores differ by >= 0.25), so a pair is always made
            assert rho >= 0.5 - 1e-6
        return
    chosen, rejected = out.chosen, out.rejected
    assert chosen is not rejected and chosen.id != rejected.id
    assert chosen.score > rejected.score
    s_max = max(r.score for r in responses)
    s_min = min(r.score for r in responses)
    top = [r for r in responses if r.score >= (1 - rho) * s_max + rho * s_min - TOL]
    bottom = [r for r in responses if r.score <= (1 - rho) * s_min + rho * s_max + TOL]
    assert chosen in top and rejected in bottom
    if rho == 0.0:
        assert chosen.score == s_max and rejected.score == s_min
    else:
        assert chosen.length == min(r.length for r in top)
        assert rejected.length == max(r.length for r in bottom)


@settings(max_examples=200, deadline=None)
@given(responses_st, st.integers(0, 2**32 - 1))
def test_rho_zero_picks_max_and_min(responses: list[ScoredResponse], seed: int) -> None:
    out = select_actor_pair(responses, 0.0, random.Random(seed))
    if isinstance(out, ActorChoice):
        assert out.chosen.score == max(r.score for r in responses)
        assert out.rejected.score == min(r.score for r in responses)
    else:
        assert len(responses) < 2 or len({r.score for r in responses}) == 1


@settings(max_examples=200, deadline=None)
@given(responses_st, st.floats(min_value=0.0, max_value=1.0), st.integers(1, 5000))
def test_max_length_only_removes_pairs(responses: list[ScoredResponse], rho: float, cap: int) -> None:
    free = select_actor_pair(responses, rho, random.Random(1))
    capped = select_actor_pair(responses, rho, random.Random(1), max_chosen_length=cap)
    if isinstance(free, ActorChoice) and free.chosen.length > cap:
        assert capped == Skip(SKIP_CHOSEN_TOO_LONG)
    else:
        assert capped == free
