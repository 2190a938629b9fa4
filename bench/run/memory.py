"""glibc's allocator, set so that a batch's memory is reused by the next one.

A batch's activations are blocks of megabytes (25 MB for vae-conv's decoder at a batch of 500).
With its default, adaptive thresholds, glibc hands such blocks back to the kernel when they are
freed and faults fresh pages in for the next batch, more or less often depending on what ran
before. ``keep_freed_memory`` fixes the thresholds so they stay in the process. The processes
bench starts set it (the ``bench`` command, its ``--jobs`` and Ray workers); a program that calls
bench's Python API may call it too. No torch import here: the command's start stays quick.
"""

from __future__ import annotations

import ctypes
import functools
import sys

# blocks up to this size come from the heap rather than from a mapping of their own (glibc's largest)
MMAP_THRESHOLD = 32 << 20
# free memory at the heap's top goes back to the kernel only beyond this
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Keep freed blocks of up to ``MMAP_THRESHOLD`` bytes in this process for the next batch
    (glibc's ``mallopt``; at most ``TRIM_THRESHOLD`` of free memory is held at the heap's top).
    Returns whether it applied: with another C library, or on another system, it does nothing.
    Values do not change, only where their memory comes from (docs/performance.md: training and
    the evaluation's forward passes, with and without it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        # glibc only: another C library's mallopt may number its parameters otherwise
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
