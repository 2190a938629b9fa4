"""Torch's CPU thread count from the cores this process may run on.

torch reads the CPU affinity once, when it is imported; a process whose affinity changes later
keeps the old count, and parallel runs on one machine must divide the cores between them:
``set_threads(cores // jobs)`` in each, or ``set_threads(None)`` for all of them.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: every available core; at least 1); returns it."""
    n = available_cores() if n is None else max(1, int(n))
    torch.set_num_threads(n)
    return n
