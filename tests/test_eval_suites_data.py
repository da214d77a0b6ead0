"""Suite data and bookkeeping: the annotation cache, the fixed stratified sample, RewardBench-style pairs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metareward.errors import InputError
from metareward.evaluation.suites import data
from metareward.evaluation.suites.annotation_cache import AnnotationCache, annotation_key
from metareward.ranked import load_agreement_set, load_preference_pairs

# ------------------------------------------------------------------------------------------ cache


def test_cache_key_depends_on_order_and_every_field():
    base = annotation_key("hf:j", "T", "p", "a", "b", {"max_tokens": 8})
    assert base != annotation_key("hf:j", "T", "p", "b", "a", {"max_tokens": 8})  # the order
    assert base != annotation_key("hf:k", "T", "p", "a", "b", {"max_tokens": 8})
    assert base != annotation_key("hf:j", "T2", "p", "a", "b", {"max_tokens": 8})
    assert base != annotation_key("hf:j", "T", "p", "a", "b", {"max_tokens": 9})
    assert base == annotation_key("hf:j", "T", "p", "a", "b", {"max_tokens": 8})


def test_cache_persists_and_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "annotations.jsonl"
    c = AnnotationCache(path)
    c.put_many([("k1", "x", 0.25), ("k2", "x", "text")])
    with path.open("a") as f:
        f.write('{"key": "k3", "kind": "x", "val')  # killed mid-write
    c2 = AnnotationCache(path)
    assert c2.values == {"k1": 0.25, "k2": "text"}
    assert path.read_text().endswith('"text"}\n')  # the torn bytes are gone, appends start clean
    c2.put_many([("k3", "x", 1.0)])
    assert AnnotationCache(path).values == {"k1": 0.25, "k2": "text", "k3": 1.0}


def test_cache_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text('{"key": "a", "value": 1}\nnot json\n{"key": "b", "value": 2}\n')
    with pytest.raises(InputError, match=r"annotations.jsonl:2: malformed"):
        AnnotationCache(path)
    path.write_text('{"key": "a", "value": 1}\n{"value": 2}\n')
    with pytest.raises(InputError, match=r"annotations.jsonl:2: field 'key'"):
        AnnotationCache(path)


class Req:
    def __init__(self, id):
        self.id = id


def test_cache_annotate_asks_only_for_missing_and_resumes_after_a_crash(tmp_path):
    path = tmp_path / "a.jsonl"
    asked: list[list[str]] = []

    def judge(fail_after=None):
        def call(reqs):
            asked.append([r.id for r in reqs])
            for i, r in enumerate(reqs):
                if fail_after is not None and i >= fail_after:
                    raise RuntimeError("killed")
                yield r.id, f"v-{r.id}"
        return call

    reqs = [Req(f"r{i}") for i in range(5)]
    keys = ["k0", "k1", "k2", "k1", "k4"]  # r3 has the same key as r1: judged once
    with pytest.raises(RuntimeError, match="killed"):
        AnnotationCache(path).annotate(reqs, keys, "t", judge(fail_after=2), lambda o: o, lambda r: r.id, log=lambda m: None)
    assert asked == [["r0", "r1", "r2", "r4"]]
    out = AnnotationCache(path).annotate(reqs, keys, "t", judge(), lambda o: o, lambda r: r.id, log=lambda m: None)
    assert asked[1] == ["r2", "r4"]  # only what the crash lost
    assert out == {"r0": "v-r0", "r1": "v-r1", "r2": "v-r2", "r3": "v-r1", "r4": "v-r4"}
    AnnotationCache(path).annotate(reqs, keys, "t", judge(fail_after=0), lambda o: o, lambda r: r.id, log=lambda m: None)
    assert len(asked) == 2  # all cached: the judge is not called at all


# ------------------------------------------------------------------------------------------ sampling


def test_stratified_sample_of_alpacaeval_is_fixed():
    items = data.alpaca_items()
    assert len(items) == 805
    s = data.stratified_sample(items, 16, lambda x: x.id, lambda x: x.dataset)
    # 805 -> 16 by largest remainder over helpful_base 129, koala 156, oasst 188, selfinstruct 252, vicuna 80
    assert data.strata_counts(s, lambda x: x.dataset) == {"helpful_base": 2, "koala": 3, "oasst": 4,
                                                          "selfinstruct": 5, "vicuna": 2}
    again = data.stratified_sample(list(reversed(items)), 16, lambda x: x.id, lambda x: x.dataset)
    assert {x.id for x in again} == {x.id for x in s}  # independent of the input order


def test_arena_items_and_baselines():
    items = data.arena_items()
    assert len(items) == 750
    assert {it.category: it.baseline_model for it in items} == {"hard_prompt": "o3-mini-2025-01-31",
                                                                 "creative_writing": "gemini-2.0-flash-001"}
    s = data.stratified_sample(items, 16, lambda x: x.id, lambda x: x.subcategory)
    assert data.strata_counts(s, lambda x: x.subcategory) == {"coding": 6, "creative_writing": 5, "math": 5}
    assert len(data.ifeval_rows()) == 541


@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6), n=st.integers(0, 60))
def test_stratified_sample_allocation_property(sizes, n):
    items = [(f"s{s}", f"s{s}-{i}") for s, size in enumerate(sizes) for i in range(size)]
    out = data.stratified_sample(items, n, lambda x: x[1], lambda x: x[0])
    total = len(items)
    if n == 0 or n >= total:
        assert out == items
        return
    assert len(out) == n
    counts = data.strata_counts(out, lambda x: x[0])
    for s, size in enumerate(sizes):
        quota = n * size / total
        assert int(quota) <= counts.get(f"s{s}", 0) <= int(quota) + 1


# ------------------------------------------------------------------------------------------ RewardBench pairs


def test_preference_pairs_file(tmp_path):
    path = tmp_path / "rb.jsonl"
    rows = [{"id": 7, "prompt": "p1", "chosen": "good", "rejected": "bad", "subset": "chat"},
            {"prompt": "p2", "chosen": "g2", "rejected": "b2", "subset": "safety"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_agreement_set(path)
    assert [p.id for p in pairs] == ["7", "p000002"]
    assert pairs[0].texts == ["good", "bad"] and pairs[0].ranks == [0, 1]
    assert pairs[1].meta["subset"] == "safety"
    as_array = tmp_path / "rb.json"
    as_array.write_text(json.dumps(rows))
    assert [p.prompt for p in load_preference_pairs(as_array)] == ["p1", "p2"]


@pytest.mark.parametrize("row,msg", [
    ({"prompt": "p", "chosen": "", "rejected": "b"}, r"rb.jsonl:1: field 'chosen'"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "subset": 3}, r"rb.jsonl:1: field 'subset'"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "extra": 1}, r"rb.jsonl:1: unknown field"),
    ({"id": "a/b", "prompt": "p", "chosen": "a", "rejected": "b"}, r"rb.jsonl:1: field 'id'"),
])
def test_preference_pairs_errors_name_file_line_field(tmp_path, row, msg):
    path = tmp_path / "rb.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match=msg):
        load_preference_pairs(path)
