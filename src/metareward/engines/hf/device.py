"""Where and in what precision the hf engine runs, and the CPU allocator setting it relies on.

``pick_device`` / ``pick_dtype`` turn the config's ``device`` and ``dtype`` strings into torch objects
(``dtype="auto"``: bf16 where the hardware computes it natively, float32 otherwise).
``keep_freed_memory`` asks glibc to keep freed heap memory for reuse (see its docstring; figures in
``docs/performance.md``, "Engine internals (hf)").
"""

from __future__ import annotations

import functools
import platform

import torch

from metareward.engines.hf.kernels import cpu_flags


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (x86 AVX512-BF16 / AMX-BF16, or Arm BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


MALLOC_KEEP_BYTES = 32 << 20  # glibc's largest heap (not mmap) allocation; freed heap is kept up to 1 GiB
MALLOC_ARENAS = 1  # every thread allocates from glibc's main heap


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc (once per process; Linux only) to serve allocations up to 32 MiB from its heap,
    to keep freed heap memory instead of returning it to the OS, and to serve every thread from that one
    heap. True if it took effect.

    Why: by default glibc hands a tensor of more than ~128 KiB-32 MiB fresh pages from the OS and
    returns them when it is freed, so the next one page-faults again. A prefill's temporaries are
    megabytes each, so its element-wise operations run mostly into page faults (the prefill times with
    and without this are in ``docs/performance.md``, "Engine internals (hf)"). The cost:
    the process keeps its peak heap mapped while the engine runs. ``HFEngine.close`` hands it back
    (``memory.release_freed_memory``: ``malloc_trim(0)``), and so does the run loop between generation
    and training, so training does not start on top of the engine's leftovers. Tensors the engine
    reuses itself (``RowBufferPool``) never reach malloc.

    One heap for all threads: by default each new thread that allocates (the decoding kernels' worker
    threads, oneDNN's) gets a heap of its own, up to 8 per core, and some of each stays resident after
    the engine closes, more each time an engine is built again (figures: ``docs/performance.md``,
    "Engine internals (hf)")."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
        return (bool(libc.mallopt(m_mmap_threshold, MALLOC_KEEP_BYTES)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
                and bool(libc.mallopt(m_arena_max, MALLOC_ARENAS)))
    except (OSError, AttributeError):  # not glibc
        return False


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware computes it natively (see module docstring), else float32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)

