"""Process settings for long training runs (applied by the command line, not on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["fix_mmap_threshold", "MMAP_THRESHOLD"]

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


MMAP_THRESHOLD = (1 << 20) + (1 << 16)
"""1 MiB and 64 KiB: a buffer of exactly 1 MiB (a tile temporary of 256k floats, which the
allocator's alignment takes just past 1 MiB) stays on the heap; anything larger, such
as a parameter-sized buffer of the CMS levels (2 MiB), is served by ``mmap``. Against a
threshold of exactly 1 MiB, on a 2-core CPU: the head-to-head HOPE's truncated step at
T=512 takes 0.93× the time (interleaved in one process), its full step at T=2048
22.3 s against 24.9 s at 2,364 MB peak RSS against 2,227 MB (docs/performance.md)."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``size`` bytes and more from ``mmap`` (glibc ``mallopt``).

    glibc raises its mmap threshold after each large free, so the parameter-sized
    buffers a scan allocates and frees per chunk end up on the heap, fragment it,
    and keep the resident set several times larger than the live tensors (measured:
    6.9 GB vs 2.0 GB peak RSS for one training step of a 10M-parameter HOPE at
    T = 1024). A fixed threshold returns them to the system on free. A no-op off
    Linux/glibc or when ``MALLOC_MMAP_THRESHOLD_`` is set. Returns whether it applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(size)))
    except (OSError, AttributeError):
        return False
