"""Seed derivation: exact values (a changed seed changes every record of a run) and the formulas it replaced."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metareward.seeds import batch_seed, derive_seed, named_rng, request_seed, sample_seed
from metareward.stages import common


def test_exact_values():
    # computed by the code these helpers replaced (stages/common, the hf engine, the openai engine, eft)
    assert request_seed(0, 1, "actor", "p1") == 4821210263255250463
    assert request_seed(7, 2, "judge", "p/r0") == 3687552036181635706
    assert batch_seed([1, 2]) == 8538625527952439319
    assert batch_seed([]) == 1449310910991872227
    assert sample_seed(7, 0) == 1589301156
    assert sample_seed(2**62, 3) == 1847871084
    assert named_rng("eft-downsample", 0).random() == 0.26497107617865046
    assert common.request_seed is request_seed  # the stages use this one


def _old_request_seed(run_seed: int, iteration: int, stage: str, request_id: str) -> int:
    key = f"{run_seed}|{iteration}|{stage}|{request_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _old_batch_seed(seeds: list[int]) -> int:
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _old_sub_seed(seed: int, k: int) -> int:
    digest = hashlib.sha256(f"{seed}|{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


SEED = st.integers(min_value=0, max_value=2**63 - 1)


@given(SEED, st.integers(0, 100), st.text(max_size=20), st.text(max_size=40))
def test_request_seed_is_the_old_formula(run_seed, iteration, stage, request_id):
    got = request_seed(run_seed, iteration, stage, request_id)
    assert got == _old_request_seed(run_seed, iteration, stage, request_id)
    assert 0 <= got < 2**63


@given(st.lists(SEED, max_size=8))
def test_batch_seed_is_the_old_formula(seeds):
    assert batch_seed(seeds) == _old_batch_seed(seeds)


@given(SEED, st.integers(0, 64))
def test_sample_seed_is_the_old_formula(seed, k):
    got = sample_seed(seed, k)
    assert got == _old_sub_seed(seed, k) and 0 <= got < 2**31


def test_derive_seed_parts_and_bits():
    assert derive_seed("a", 1) == derive_seed("a|1", sep=",")  # parts are joined, then hashed
    assert derive_seed("a", 1) != derive_seed(1, "a")
    assert derive_seed("x", bits=31) == derive_seed("x") & (2**31 - 1)
    assert derive_seed("x", bits=64) >= derive_seed("x")
    with pytest.raises(ValueError, match="bits must be in"):
        derive_seed("x", bits=0)


def test_named_rng_is_a_string_seeded_stream():
    assert named_rng("eft-split", 3).random() == named_rng("eft-split", 3).random()
    assert named_rng("eft-split", 3).random() != named_rng("eft-split", 4).random()
