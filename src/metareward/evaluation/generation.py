"""Running evaluation requests through an engine, resumably.

Evaluation generates a lot (answers for every model, judgments, pairwise verdicts), so each batch of
requests goes through ``stages.chunks.run_chunked``: finished chunks are appended to a log under the eval
work folder, and a rerun after a kill (or with more models or parts) reuses everything already
generated instead of recomputing it. The log's name must therefore identify the requests: callers
pass a key built from the model, the prompt set and the settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest
from metareward.stages.chunks import run_chunked


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able settings, for naming work logs."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def generate_cached(
    engine: Engine, requests: Sequence[GenerationRequest], log: Path, desc: str, chunk_size: int = 16
) -> dict[str, GenerationOutput]:
    """``engine.generate`` over ``requests``, resumable through the chunk log ``log``; by request id."""
    done = run_chunked(log, requests, engine.generate, _answer_columns, chunk_size, desc)
    return {k: GenerationOutput.from_columns(v) for k, v in done.items()}


def _answer_columns(out: GenerationOutput) -> dict[str, Any]:
    """An output as answer logs store it: ``GenerationOutput.to_columns`` without ``choice_probs``
    (evaluation's generation requests carry no follow-ups; the logs have never held the field)."""
    columns = out.to_columns()
    del columns["choice_probs"]
    return columns


def choices_cached(
    engine: Engine, requests: Sequence[ChoiceRequest], log: Path, desc: str, chunk_size: int = 32
) -> dict[str, ChoiceOutput]:
    """``engine.choice_probs`` over ``requests``, resumable like ``generate_cached``."""
    done = run_chunked(log, requests, engine.choice_probs, lambda o: {"id": o.id, "probs": o.probs}, chunk_size, desc)
    return {k: ChoiceOutput(**v) for k, v in done.items()}
