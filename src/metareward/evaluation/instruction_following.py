"""Verifiable instruction following (IFEval / IFBench style) for the evaluation suites.

The checks themselves live one layer down, in ``metareward.verifiable.checks``, because the ``verifier``
judge (a stage) uses them too; this module keeps the evaluation layer's name for them.
"""

from __future__ import annotations

from metareward.verifiable.checks import NLTK_DATA_NEEDED, check_response, offline_nltk, registry, summarize

__all__ = ["NLTK_DATA_NEEDED", "check_response", "offline_nltk", "registry", "summarize"]
