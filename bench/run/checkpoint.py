"""A run's local folder: its checkpoints, its claim, and what it could not send to the store.

Every run has a folder keyed by its config hash (the resolved run config + the bench version),
under the bench home: ``$BENCH_HOME``, else ``.bench/`` beside a sqlite tracking database,
else ``./.bench``::

    <home>/runs/<config_hash>/
        checkpoint.pt   the trainer state at the last checkpoint
        claim.lock      locked (flock) by the process training the run; holds its pid
        offline/        what could not reach the tracking store (see ``bench.store.journal``)

Checkpoints are written to a temporary file in the same folder, flushed to disk, and renamed
over the old one (``os.replace`` is atomic), so a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file. They are read back with
``torch.load(weights_only=True)``: a checkpoint is data, never code.

The claim is how two ``bench run`` processes sharing a store avoid training the same run: the
first to lock ``claim.lock`` trains it, the other moves on and comes back to it at the end.
The operating system drops a flock when its process dies, kill -9 included, so a claim never
outlives its owner and needs no timeout. Claims coordinate processes that share the bench home
(one machine, or a shared POSIX file system with working locks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.files import Claim, atomic_write, try_lock, wait_lock
from bench.store.tracking import sqlite_path

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be loaded safely; the message names the file."""


def bench_home(uri: str) -> Path:
    """Where local run folders live for the store at ``uri``."""
    env = os.environ.get("BENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    db = sqlite_path(uri)
    return (db.parent if db else Path.cwd()) / ".bench"


def save_state(state: dict, path: Path) -> None:
    """``torch.save`` with an atomic replace."""
    import torch

    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors, numbers, strings and containers only."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be loaded safely ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a bench checkpoint")
    return state


# --------------------------------------------------------------------------- run folders


class RunFolder:
    """The local folder of one run (see the module docstring)."""

    def __init__(self, home: Path, config_hash: str) -> None:
        self.path = home / "runs" / config_hash
        self.config_hash = config_hash

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def offline(self) -> Path:
        return self.path / "offline"

    @property
    def claim_file(self) -> Path:
        return self.path / "claim.lock"

    def try_claim(self) -> Claim | None:
        return try_lock(self.claim_file)

    def wait_claim(self, should_stop: Callable[[], bool] = lambda: False) -> Claim | None:
        return wait_lock(self.claim_file, should_stop)

    def save_checkpoint(self, state: dict) -> None:
        save_state(state, self.checkpoint)

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None when there is none; ``CheckpointError`` when unreadable."""
        if not self.checkpoint.is_file():
            return None
        return load_state(self.checkpoint)

    def clear_checkpoint(self) -> None:
        self.checkpoint.unlink(missing_ok=True)

    def write_info(self, info: dict[str, Any]) -> None:
        """``run.json``: which store and run this folder belongs to (for people reading the folder)."""
        text = json.dumps(info, indent=2, default=str)
        atomic_write(self.path / "run.json", lambda f: f.write(text), mode="w")
