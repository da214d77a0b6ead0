"""Every seed the package derives from other values: one hash, in one place.

A run has one seed (``RunConfig.seed``); every random choice below it gets its own seed by hashing
the run seed together with *where* the choice is made (iteration, stage, request id, ...). Hashing,
rather than drawing from one shared generator, makes each choice independent of the order and the
number of the others, so a resumed or re-chunked stage makes the same choices.

``derive_seed`` is the hash: SHA-256 of the parts joined by a separator, its first 8 bytes read
little-endian, masked to ``bits`` bits (63 by default, so the seed is a non-negative signed 64-bit int;
31 for APIs that take a signed 32-bit seed: because the bytes are read little-endian, 31 bits are the
low bits of the first 4 bytes). The named helpers below fix the parts and separators their users have
always used, so every seed, and thus every record, is the same as before they were gathered here.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence


def derive_seed(*parts: object, sep: str = "|", bits: int = 63) -> int:
    """A stable ``bits``-bit seed from ``parts`` (each written with ``str``, joined by ``sep``)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"derive_seed: bits must be in [1, 64], got {bits}")
    key = sep.join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << bits) - 1)


def request_seed(run_seed: int, iteration: int, stage: str, request_id: str) -> int:
    """The seed of one request (or one seeded choice) of a stage: the same run, iteration, stage and id
    always give the same seed."""
    return derive_seed(run_seed, iteration, stage, request_id)


def batch_seed(seeds: Sequence[int]) -> int:
    """One generator seed for a batch of requests, from their seeds in batch order (an engine that draws
    a whole batch from one generator)."""
    return derive_seed(*seeds, sep=",")


def sample_seed(seed: int, k: int) -> int:
    """A 31-bit seed for sample ``k`` of a request with seed ``seed``, when its ``n`` samples are sent as
    ``n`` single-sample requests (an API that takes one 32-bit seed per request)."""
    return derive_seed(seed, k, bits=31)


def named_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded by the string ``"part1:part2:..."`` (e.g. ``named_rng("eft-split", 0)``):
    a named, reproducible stream for choices that are not per request. ``random.Random`` hashes a string
    seed itself (SHA-512), so no ``derive_seed`` is involved."""
    return random.Random(":".join(map(str, parts)))
