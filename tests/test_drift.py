"""Drift alarms: each check fires exactly at its threshold, with the numbers and the threshold in its text."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from test_eval_diagnostics import hand_made_run

from metareward.drift import (
    IterationStats,
    agreement_from_eval,
    check_drift,
    judge_label,
    length_growth,
    position_bias,
    score_inflation,
    summary_alarms,
)
from metareward.records import PreferencePair, write_jsonl_atomic

S = IterationStats


def test_score_inflation_with_flat_down_rising_and_unknown_agreement():
    prev, cur = S(1, score_mean=3.0), S(2, score_mean=3.5)
    assert judge_label(1) == "seed" and judge_label(2) == "iter_1"
    flat = score_inflation(prev, cur, {"seed": 0.60, "iter_1": 0.605})
    assert flat.message == ("score inflation: mean judge score rose 3.00 -> 3.50 (+0.50, threshold +0.1 points) "
                            "while judge agreement was flat: 60.0% (seed) -> 60.5% (iter_1) (flat = within ±1 points)")
    down = score_inflation(prev, cur, {"seed": 0.60, "iter_1": 0.50})
    assert "was down: 60.0% (seed) -> 50.0% (iter_1)" in down.message
    assert score_inflation(prev, cur, {"seed": 0.60, "iter_1": 0.62}) is None  # the judge got better too
    assert "was flat: 60.0% (seed) -> 61.0%" in score_inflation(prev, cur, {"seed": 0.60, "iter_1": 0.61}).message
    unknown = score_inflation(prev, cur, {"seed": 0.6})
    assert unknown.message == ("score inflation: mean judge score rose 3.00 -> 3.50 (+0.50, threshold +0.1 points); "
                               "judge agreement unknown (no eval.json agreement for iter_1: run metareward eval), "
                               "so the rise cannot be told apart from a more lenient judge")
    assert score_inflation(prev, S(2, score_mean=3.1), {}) is None  # +0.1 is not above the threshold
    assert score_inflation(prev, S(2, score_mean=None), {}) is None


def test_position_bias_either_position_above_ninety_percent():
    assert position_bias(S(1, decisive=10, first_position_wins=9)) is None  # 90% is not above 90%
    a = position_bias(S(1, decisive=20, first_position_wins=19))
    assert a.kind == "position_bias" and a.message == (
        "meta-judge position bias: the first position won 19 of 20 decisive verdicts (95.0%, threshold 90%)")
    b = position_bias(S(3, decisive=11, first_position_wins=0))
    assert str(b) == ("iteration 3: meta-judge position bias: the second position won 11 of 11 decisive verdicts "
                      "(100.0%, threshold 90%)")
    assert position_bias(S(1, decisive=0, first_position_wins=0)) is None


def test_length_growth_against_the_chosen_rejected_gap():
    prev = S(1, response_length_mean=400.0, actor_chosen_length_mean=450.0, actor_rejected_length_mean=400.0)
    # allowed: gap 50 + 10% of 400 = 90
    assert length_growth(prev, S(2, response_length_mean=490.0)) is None
    a = length_growth(prev, S(2, response_length_mean=491.0))
    assert a.message == ("length growth: mean response length grew 400 -> 491 chars (+91), more than iteration 1's "
                         "actor pairs allow: chosen-rejected gap +50 chars (counted as 50) + 10% of 400 = 90 chars")
    shorter = S(1, response_length_mean=400.0, actor_chosen_length_mean=300.0, actor_rejected_length_mean=500.0)
    b = length_growth(shorter, S(2, response_length_mean=441.0))  # chosen shorter: gap counts as 0, allowed 40
    assert "gap -200 chars (counted as 0) + 10% of 400 = 40 chars" in b.message
    assert length_growth(S(1, response_length_mean=400.0), S(2, response_length_mean=900.0)) is None  # no pairs


def test_check_drift_orders_and_collapse():
    stats = [
        S(2, score_mean=4.0, decisive=10, first_position_wins=10, judge_pairs=0),
        S(1, score_mean=3.0, decisive=10, first_position_wins=5, judge_pairs=4),
        S(3, score_mean=4.0, judge_pairs=None),  # no meta-judge (self-rewarding): no collapse alarm
    ]
    alarms = check_drift(stats, {"seed": 0.5, "iter_1": 0.5})
    assert [(a.iteration, a.kind) for a in alarms] == [
        (2, "score_inflation"), (2, "position_bias"), (2, "judge_pairs_collapsed")]
    assert alarms[2].message == ("judge pairs collapsed: the meta-judge ran but 0 judge pairs were built (iteration 1 "
                                 "had 4) (threshold: fewer than 1); the judge is not trained this iteration")


@given(st.lists(st.floats(0, 5), min_size=1, max_size=6))
def test_non_increasing_scores_never_inflate(scores):
    stats = [S(i + 1, score_mean=s) for i, s in enumerate(sorted(scores, reverse=True))]
    assert not [a for a in check_drift(stats) if a.kind == "score_inflation"]


def test_agreement_from_eval_and_summary_alarms(tmp_path):
    ev = {"results": {"seed": {"agreement": {"agreement": 0.5}}, "iter_1": {"length": {}}}}
    assert agreement_from_eval(ev) == {"seed": 0.5, "iter_1": None}
    assert agreement_from_eval({"results": [1]}) == {}
    run = hand_made_run(tmp_path)
    # iteration 1 of the hand-made run: 4 of 6 decisive verdicts first position (66.7%): no alarm
    assert summary_alarms(run, 1) == []
    # iteration 2: same judgments, but no judge pair, 6 of 6 verdicts for position A
    it2 = run / "iter_2"
    it2.mkdir()
    for name in ("prompts.jsonl", "responses.jsonl", "judgments.jsonl", "actor_pairs.jsonl"):
        (it2 / name).write_text((run / "iter_1" / name).read_text())
    metas = [json.loads(x) for x in (run / "iter_1" / "meta_judgments.jsonl").read_text().splitlines()]
    for m in metas:
        if m["verdict"] == "B":
            m["verdict"], m["result"] = "A", 1
    (it2 / "meta_judgments.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    write_jsonl_atomic(it2 / "judge_pairs.jsonl", list[PreferencePair]())
    assert summary_alarms(run, 2) == [
        "meta-judge position bias: the first position won 6 of 6 decisive verdicts (100.0%, threshold 90%)",
        "judge pairs collapsed: the meta-judge ran but 0 judge pairs were built (iteration 1 had 1) "
        "(threshold: fewer than 1); the judge is not trained this iteration",
    ]


def test_end_of_iteration_summary_prints_the_alarms(tmp_path):
    from metareward.layout import RunLayout
    from metareward.records import Judgment, MetaJudgment, Response, read_jsonl
    from metareward.store import IterationStore
    from metareward.summary import format_summary, iteration_summary

    run = hand_made_run(tmp_path)
    it = run / "iter_1"
    (it / "judge_pairs.jsonl").write_text("")  # the meta-judge ran, no judge pair came out
    store = IterationStore(RunLayout(run).iteration(1))
    s = iteration_summary(store, read_jsonl(it / "responses.jsonl", Response), read_jsonl(it / "judgments.jsonl", Judgment),
                          read_jsonl(it / "meta_judgments.jsonl", MetaJudgment), [], [], k=2)
    assert s["drift_alarms"] == ["judge pairs collapsed: the meta-judge ran but 0 judge pairs were built "
                                 "(threshold: fewer than 1); the judge is not trained this iteration"]
    text = format_summary(1, s, {"actor": 1.0})
    assert text.splitlines()[-1] == ("  DRIFT ALARM  judge pairs collapsed: the meta-judge ran but 0 judge pairs were "
                                     "built (threshold: fewer than 1); the judge is not trained this iteration")
