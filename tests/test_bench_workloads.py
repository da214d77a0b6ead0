"""The benchmark's paper-shape meta-judge workload (``benchmarks/run.py --meta-n``): every ordered pair
of one response's N distinct judgments, once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [3, 5, 7, 11])
def test_meta_judge_battles_are_every_ordered_pair_of_n_distinct_judgments(bench, n):
    reqs = bench.meta_judge_battles(n, quick=True)
    assert len(reqs) == n * (n - 1)  # 110 at the paper's N = 11
    assert len({r.id for r in reqs}) == len(reqs)
    assert len({r.messages[0]["content"] for r in reqs}) == len(reqs)
    judgments = [bench.judgment_text(j) for j in range(n)]
    assert len(set(judgments)) == n
    pairs = {r.id.split("-", 1)[1] for r in reqs}
    assert pairs == {f"{a}-{b}" for a in range(n) for b in range(n) if a != b}
    for r in reqs:
        a, b = (int(x) for x in r.id.split("-")[1:])
        text = r.messages[0]["content"]
        assert judgments[a] in text and judgments[b] in text
        assert text.index(judgments[a]) < text.index(judgments[b])  # judgment a in position A
    assert {r.n for r in reqs} == {1} and {r.sampling.max_tokens for r in reqs} == {16}
    assert {r.sampling.max_tokens for r in bench.meta_judge_battles(n, quick=False)} == {128}
