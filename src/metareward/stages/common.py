"""Helpers shared by the stages: per-request seeds and the single user turn."""

from __future__ import annotations

import hashlib

from metareward.engines.base import Message


def request_seed(run_seed: int, iteration: int, stage: str, request_id: str) -> int:
    """A stable 63-bit seed for one request: same run, iteration, stage and id give the same seed."""
    key = f"{run_seed}|{iteration}|{stage}|{request_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def user_turn(text: str) -> tuple[Message, ...]:
    """Single-turn chat messages: the paper puts every prompt (actor, judge, meta-judge) in the user turn."""
    return ({"role": "user", "content": text},)
