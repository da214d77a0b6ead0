"""Build the hf engine's C++ decoding kernels once, at set-up, so a run's first stage does not pay the
~30-60 s compile (the build is cached by torch under ~/.cache/torch_extensions, keyed by the sources,
flags, CPU features and torch version). Exits 0 either way: without a compiler the engine falls back to
torch operations, with a warning, and this script says so."""

from __future__ import annotations

import sys
import time

from metareward.engines.hf.kernels import load_decode_kernel


def main() -> int:
    start = time.perf_counter()
    kernel = load_decode_kernel()
    if kernel is None:
        print("setup: C++ decode kernels not built; the hf engine will use torch operations", file=sys.stderr)
    else:
        print(f"setup: C++ decode kernels ready ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
