"""glibc malloc settings for training on CPU.

glibc serves allocations above a dynamic threshold (128 KiB to start) with fresh
``mmap`` calls and returns freed memory at the top of the heap to the system. A CPU
training step allocates and frees the same large activation and gradient buffers every
step, so with the defaults each step can pay for fresh, zero-filled pages: on a small CNN
that is up to a third of the step, and whether the threshold adapts depends on the order
of the first allocations, so the same run is fast one time and slow the next
(``docs/benchmarks-engine.md``). Raising the mmap and trim thresholds keeps those buffers
in the heap for reuse, as tcmalloc and jemalloc do. The price is that up to
``TRIM_THRESHOLD`` bytes of freed memory stay with the process.

Applied by the engine when it trains on CPU under glibc; ``PRIVET_MALLOC_TUNING=0``
leaves malloc alone (for instance when jemalloc or tcmalloc is preloaded).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20

_tuned = False


def tune_for_training() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are set."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("PRIVET_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
