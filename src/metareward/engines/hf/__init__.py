"""The ``hf`` engine: transformers on a CPU or one GPU, with its own decoding loop (see ``engine.py``).

Modules, one concern each: ``engine`` (``HFEngine``: prefill, the decoding loop, follow-ups, choice
probabilities), ``schedule`` (batch order, prefix sharing, feed grouping and their costs: pure functions),
``rows`` (the decoding loop's per-row bookkeeping), ``cache`` (the shared-prefix KV cache and its row
buffers), ``attention`` (the attention function transformers calls, registered when an engine is built),
``sampling`` (the torch sampler), ``fused_decoder`` (Llama-architecture decoding steps straight from fused
weights), ``kernels`` (the C++ extension in ``csrc/``, built on first use) and ``device`` (device, dtype
and allocator settings).
Importing this package registers nothing with transformers and builds nothing.
"""

from metareward.engines.hf.attention import CompileFallbackWarning
from metareward.engines.hf.engine import HFEngine

__all__ = ["CompileFallbackWarning", "HFEngine"]
