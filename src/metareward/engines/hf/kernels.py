"""The hf engine's decoding-step C++ kernels, built on first use: the attention kernel
(``csrc/decode_attention.cpp``), the fused decoder's layer kernels (``csrc/decode_layer.cpp``:
RMSNorm, rotary + query scaling + cache write, SiLU-gating; used by ``FusedDecoder.kernel_step``) and
the sampler (``csrc/sample.cpp``: greedy or nucleus draws straight from the LM head's bf16 or float32
logits; the only kernel a float32 model uses).
The attention and cache-write kernels address each row's continuation through a row-slot map
(``csrc/row_slots.h``), so finished rows leave a batch without any buffer being copied.

Why a kernel: a decoding step's attention is, per layer, 2 x rows x kv_heads tiny matrix products
(one query token against a few hundred keys) plus ~20 element-wise passes over the scores. On a CPU the
per-product overhead of batched matmuls dominates: attention takes a large share of a step for little
arithmetic (figures: ``docs/performance.md``, "Engine internals (hf)"). The kernel runs each (row, KV head) as
one task (scores, float32 softmax, probabilities times values) over the prompt's keys and the row's
own, with no intermediate tensors; see the C++ file for its numerics.

Build: ``torch.utils.cpp_extension.load`` compiles the sources once per machine (g++ with OpenMP, tuned
for the host CPU with ``-march=native``) into torch's extension cache; later processes load the cached
library. The build directory's name carries a hash of the source, the compiler
flags and the CPU's feature flags, so a cache shared between machines never hands one CPU another's
code, and of the sources' directory: torch's build file names the sources by absolute path, so two
checkouts sharing one build directory would each rebuild it whenever the other had loaded it. Where
the build fails (no compiler, no OpenMP), ``load_decode_kernel`` warns once and returns None, and the
engine decodes through batched matmuls instead (the same numerics up to rounding).

Assumptions checked by the kernel: bf16, contiguous CPU tensors; key buffers padded to whole
``KEY_BLOCK`` s of positions; head dimension 64 or 128; 1-8 query heads per KV head.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import warnings
from pathlib import Path

import torch

NO_MASK = torch.zeros(0, dtype=torch.bool)  # the attention kernel's ``valid`` when ``start`` says it all
KEY_BLOCK = 32  # the kernel scores keys in blocks of this many positions (CHUNK in the C++ file)
SOURCES = [Path(__file__).parent / "csrc" / name for name in ("decode_attention.cpp", "decode_layer.cpp", "sample.cpp")]
HEADERS = [Path(__file__).parent / "csrc" / name for name in ("bf16.h", "row_slots.h")]  # in the build's hash, not compiled on their own
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


class KernelBuildWarning(UserWarning):
    """The C++ extension could not be built; the hf engine decodes through torch operations instead."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags`` / Arm ``Features`` of /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def load_decode_kernel(portable: bool = False):
    """The compiled extension module (``decode_attention``), or None (with a warning) if it cannot be
    built on this machine. Cached per process. ``portable=True`` builds the plain-loop variant even
    where the CPU has AVX512-BF16 dot products (for tests: it is what other CPUs run)."""
    from torch.utils.cpp_extension import load

    cflags = CFLAGS + (["-DMETAREWARD_NO_BF16_DOT"] if portable else [])
    key = hashlib.sha256(
        b"".join(path.read_bytes() for path in SOURCES + HEADERS) + " ".join(cflags).encode()
        + str(SOURCES[0].parent.resolve()).encode()
        + " ".join(sorted(cpu_flags()) or [platform.processor()]).encode() + torch.__version__.encode()
    ).hexdigest()[:12]
    try:
        return load(
            name=f"metareward_decode_attention_{key}", sources=[str(path) for path in SOURCES], extra_cflags=cflags,
            extra_ldflags=["-fopenmp"], verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - any build failure: the engine falls back to batched matmuls
        warnings.warn(
            f"the decoding attention kernel could not be built ({exc!s:.300}); the hf engine decodes "
            "through batched matmuls instead (slower on a CPU)", KernelBuildWarning, stacklevel=2,
        )
        return None


def kernel_supports(like: torch.Tensor, head_dim: int, heads: int, kv_heads: int) -> bool:
    """Whether the kernels run a model whose tensors are like ``like`` (bf16 on a CPU), with this head
    size and these query / KV head counts (1-8 query heads per KV head)."""
    return (like.device.type == "cpu" and like.dtype == torch.bfloat16 and head_dim in (64, 128)
            and heads % kv_heads == 0 and 1 <= heads // kv_heads <= 8)


def kernel_attention(kernel, query: torch.Tensor, prompt_keys_t: torch.Tensor, prompt_values: torch.Tensor,
                     prompt_len: torch.Tensor, owner: torch.Tensor, row_keys_t: torch.Tensor,
                     row_values: torch.Tensor, written: int, scaling: float,
                     slots: torch.Tensor | None = None, row_start: torch.Tensor | None = None,
                     row_valid: torch.Tensor | None = None) -> torch.Tensor:
    """One decoding step's attention through ``kernel``: queries [B, heads, 1, d] (head h uses KV head
    h // groups) against prompt ``owner[b]``'s first ``prompt_len`` keys (``prompt_keys_t`` [P, kv, d, Lp],
    values [P, kv, Lp, d]) and row b's first ``written`` continuation keys, in row ``slots[b]`` of the row
    buffers (``row_keys_t`` [S, kv, d, W], values [S, kv, W, d]; ``slots`` None: row b's own, S = B).
    Row b does not attend to its first ``row_start[b]`` continuation positions (None: it attends to all),
    or, where ``row_valid`` (bool [B, >= written]) is given, to those it leaves False. Returns [B, 1, heads, d] in bf16, as ``rows_attention`` does.

    The queries are scaled in bf16 before the kernel sees them, as the batched-matmul path does."""
    rows, heads, _, dim = query.shape
    kv_heads = prompt_keys_t.shape[1]
    grouped = (query * scaling).reshape(rows, kv_heads, heads // kv_heads, dim).contiguous()
    if slots is None:
        slots = torch.arange(rows, device=query.device)
    if row_start is None:
        row_start = torch.zeros(rows, dtype=torch.long, device=query.device)
    if row_valid is None:
        row_valid = NO_MASK
    out = kernel.decode_attention(grouped, prompt_keys_t, prompt_values, prompt_len, owner, row_keys_t, row_values,
                                  written, slots, row_start, row_valid)
    return out.reshape(rows, 1, heads, dim)
