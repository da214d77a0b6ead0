"""Loop diagnostics on hand-made run directories (records written by hand, no model)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from metareward.errors import InputError
from metareward.evaluation.diagnostics import diagnose_run, meta_judge_bias, summary
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response, write_jsonl_atomic


def J(pid: str, r: int, j: int, score: float | None, text: str = "") -> Judgment:
    return Judgment(
        id=f"{pid}/r{r}/j{j}", response_id=f"{pid}/r{r}", prompt_id=pid, index=j,
        text=text or f"Fine. Score: {score}", score=score,
    )


def M(a: str, b: str, verdict: str | None) -> MetaJudgment:
    rid = a.rsplit("/", 1)[0]
    return MetaJudgment(
        id=f"{rid}/{a.rsplit('/', 1)[1]}-{b.rsplit('/', 1)[1]}", prompt_id=rid.split("/")[0], response_id=rid,
        judgment_a=a, judgment_b=b, text=f"Winner: Judgement {verdict}" if verdict else "unclear",
        verdict=verdict, result={"A": 1, "B": -1, None: 0}[verdict],
    )


def hand_made_run(root: Path) -> Path:
    """One iteration: 2 prompts, 4 responses, 9 judgments (1 invalid), 7 meta-judgments, 1+1 pairs."""
    it = root / "iter_1"
    write_jsonl_atomic(it / "prompts.jsonl", [Prompt("p1", "Q1?"), Prompt("p2", "Q2?")])
    write_jsonl_atomic(it / "responses.jsonl", [
        Response("p1/r0", "p1", 0, "a" * 10), Response("p1/r1", "p1", 1, "b" * 20),
        Response("p2/r0", "p2", 0, "c" * 30), Response("p2/r1", "p2", 1, "d" * 40),
    ])
    judgments = [
        J("p1", 0, 0, 4.0), J("p1", 0, 1, 2.0), J("p1", 0, 2, 4.0), J("p1", 0, 3, None, "no score"),
        J("p1", 1, 0, 3.0), J("p1", 1, 1, 3.0),
        J("p2", 0, 0, 5.0), J("p2", 1, 0, 4.5), J("p2", 1, 1, 5.5 - 0.5),
    ]
    write_jsonl_atomic(it / "judgments.jsonl", judgments)
    j0, j1, j2, j3 = (f"p1/r0/j{k}" for k in range(4))
    write_jsonl_atomic(it / "meta_judgments.jsonl", [
        M(j0, j1, "A"),  # first position; higher score (4 > 2) wins
        M(j1, j0, "A"),  # first position; lower score wins -> with the line above: a flip
        M(j0, j2, "B"),  # equal scores, second position
        M(j2, j0, "A"),  # equal scores, first position; same winner j2 both orders: consistent
        M(j1, j2, None),  # tie / parse error
        M(j2, j1, "B"),  # lower score wins, second position; its reverse has no verdict
        M(j0, j3, "A"),  # j3 has no valid score: counts for position only; no reverse ordering
    ])
    write_jsonl_atomic(it / "actor_pairs.jsonl", [
        PreferencePair("actor/p1", "actor", "p1", "Q1?", "a" * 10, "b" * 20, "p1/r0", "p1/r1", 10 / 3, 3.0),
    ])
    write_jsonl_atomic(it / "judge_pairs.jsonl", [
        PreferencePair("judge/p1", "judge", "p1", "...", "x" * 100, "y" * 50, j0, j1, 4.0, 2.0),
    ])
    return root


def test_hand_made_run_exact_values(tmp_path):
    [d] = diagnose_run(hand_made_run(tmp_path))
    s = summary(d)
    assert (s["prompts"], s["responses"], s["judgments"], s["valid_scores"]) == (2, 4, 9, 8)
    assert s["parse_failure_rate"] == pytest.approx(1 / 9)
    assert s["score_mean"] == pytest.approx((4 + 2 + 4 + 3 + 3 + 5 + 4.5 + 5) / 8)
    assert s["non_integer_score_rate"] == pytest.approx(1 / 8)
    # p1: means 10/3 vs 3 (no tie); p2: means 5 vs 4.75 (no tie)
    assert s["prompt_tie_rate"] == 0.0 and s["response_pair_tie_rate"] == 0.0
    assert s["response_length_mean"] == 25.0
    assert s["actor_pairs"]["chosen_length_mean"] == 10 and s["actor_pairs"]["rejected_length_mean"] == 20
    assert s["judge_pairs"]["count"] == 1 and s["judge_pairs"]["chosen_score_mean"] == 4.0

    m = s["meta_judge"]
    assert (m["n"], m["decisive"], m["first_position_wins"]) == (7, 6, 4)
    assert m["no_verdict_rate"] == pytest.approx(1 / 7)
    assert m["first_position_rate"] == pytest.approx(4 / 6)
    assert (m["same_score_decisive"], m["same_score_first_wins"]) == (2, 1)
    assert m["first_position_rate_same_score"] == 0.5
    assert (m["different_score_decisive"], m["higher_score_wins"]) == (3, 1)
    assert m["score_bias"] == pytest.approx(1 / 3)
    assert (m["matched_orderings"], m["both_decisive"], m["flips"]) == (3, 2, 1)
    assert m["flip_rate"] == 0.5


def test_ties_and_all_position_a():
    scores = {"x/j0": 3.0, "x/j1": 3.0}
    metas = [M("x/j0", "x/j1", "A"), M("x/j1", "x/j0", "A")]
    b = meta_judge_bias(metas, scores)
    assert b.first_position_rate == 1.0 and b.flip_rate == 1.0
    assert math.isnan(b.score_bias)  # no pair with different scores


def test_prompt_tie_rate(tmp_path):
    it = tmp_path / "iter_1"
    write_jsonl_atomic(it / "judgments.jsonl", [J("p1", 0, 0, 5.0), J("p1", 1, 0, 5.0), J("p2", 0, 0, 1.0),
                                                J("p2", 1, 0, 2.0), J("p2", 2, 0, 2.0)])
    [d] = diagnose_run(tmp_path)
    assert d.prompt_tie_rate == 0.5  # p1 tied, p2 not
    assert d.response_pair_tie_rate == pytest.approx(2 / 4)  # p1: 1 of 1; p2: 1 of 3
    assert d.meta is None and d.actor_pairs is None  # files absent: numbers absent, no error


def test_not_a_run_dir(tmp_path):
    with pytest.raises(InputError, match="no iteration folders"):
        diagnose_run(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        diagnose_run(tmp_path / "missing")


def test_bad_record_names_file_and_line(tmp_path):
    it = tmp_path / "iter_1"
    it.mkdir()
    (it / "judgments.jsonl").write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(InputError, match=r"judgments.jsonl:1: missing field"):
        diagnose_run(tmp_path)


# ---------------------------------------------------------------- a realistic fake run (for the report)


def fake_run(root: Path, iterations: int = 2, prompts: int = 12, k: int = 4, n: int = 5, seed: int = 0) -> Path:
    """A run directory shaped like ``metareward run`` output, with scores drifting up each iteration."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"model: smollm2-135m\nrun_dir: {root}\n")
    for it in range(1, iterations + 1):
        d = root / f"iter_{it}"
        ps = [Prompt(f"p{i:03d}", f"Question {i}?") for i in range(prompts)]
        rs, js, ms, aps, jps = [], [], [], [], []
        for p in ps:
            for r in range(k):
                resp = Response(f"{p.id}/r{r}", p.id, r, "word " * rng.randint(20, 80 + 40 * it))
                rs.append(resp)
                for j in range(n):
                    ok = rng.random() > 0.2 / it
                    score = min(5.0, round(rng.gauss(3.4 + 0.5 * it, 0.9) * (2 if it > 1 else 1)) / (2 if it > 1 else 1))
                    score = max(0.0, score)
                    js.append(J(p.id, r, j, score if ok else None, "Because. " * rng.randint(5, 30)
                                + (f"Score: {score}" if ok else "")))
            mine = [x for x in js if x.response_id == f"{p.id}/r0" and x.score is not None]
            for a in mine:
                for b in mine:
                    if a.id != b.id:
                        u = rng.random()
                        ms.append(M(a.id, b.id, "A" if u < 0.45 + 0.1 * it else ("B" if u < 0.95 else None)))
            aps.append(PreferencePair(f"actor/{p.id}", "actor", p.id, p.text, rs[-1].text, rs[-2].text,
                                      rs[-1].id, rs[-2].id, 4.5, 2.0))
            if mine and it <= 2:
                jps.append(PreferencePair(f"judge/{p.id}", "judge", p.id, "...", mine[0].text, mine[-1].text,
                                          mine[0].id, mine[-1].id, mine[0].score, mine[-1].score))
        write_jsonl_atomic(d / "prompts.jsonl", ps)
        write_jsonl_atomic(d / "responses.jsonl", rs)
        write_jsonl_atomic(d / "judgments.jsonl", js)
        write_jsonl_atomic(d / "meta_judgments.jsonl", ms)
        write_jsonl_atomic(d / "actor_pairs.jsonl", aps)
        write_jsonl_atomic(d / "judge_pairs.jsonl", jps)
    return root


def test_fake_run_drift_is_visible(tmp_path):
    ds = diagnose_run(fake_run(tmp_path))
    assert [d.iteration for d in ds] == [1, 2]
    assert ds[1].score_mean > ds[0].score_mean
    assert ds[1].non_integer_rate > 0 == ds[0].non_integer_rate
    assert ds[1].meta.first_position_rate > ds[0].meta.first_position_rate
