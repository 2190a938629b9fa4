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
import math
import os
import re
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


# what ``Execution.checkpoint`` writes, and the ``Trainer.state_dict`` it holds
RUN_KEYS = {"run_id", "uri", "config_hash", "step", "trainer"}
TRAINER_KEYS = {"model", "step_fn", "progress", "rng", "pending"}
PROGRESS_KEYS = {"step", "images", "train_seconds"}  # ``bench.train.Progress``
RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")  # what MLflow accepts as a run id


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_run_state(state: dict, path: Path) -> int:
    """The step of a run's checkpoint (what ``Execution.checkpoint`` wrote), once its structure and
    types are those that code writes: ``CheckpointError``, naming the file, for anything else (a
    damaged or forged file). What depends on the run (the budget, the model's shapes) is checked
    when the trainer state is loaded (``bench.run.execute``)."""
    try:
        return _check_run_state(state, path)
    except CheckpointError:
        raise
    except Exception as e:  # a value no check foresaw (a tensor where a number was): damaged all the same
        raise CheckpointError(f"{path}: not a valid bench run checkpoint ({type(e).__name__})") from None


def _check_run_state(state: dict, path: Path) -> int:
    import torch

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid bench run checkpoint ({why})")

    if missing := RUN_KEYS - state.keys():
        raise bad(f"missing {', '.join(sorted(missing))}")
    for key in ("run_id", "uri", "config_hash"):
        if not isinstance(state[key], str):
            raise bad(f"{key} is a {type(state[key]).__name__}, not a string")
    if not RUN_ID.fullmatch(state["run_id"]):
        raise bad(f"run_id {state['run_id'][:80]!r} is not a run id")
    step = state["step"]
    if not _is_int(step) or step < 0:
        raise bad(f"step {str(step)[:80]!r} is not a non-negative integer")
    trainer = state["trainer"]
    if not isinstance(trainer, dict):
        raise bad("trainer is not a dict")
    if trainer.keys() - TRAINER_KEYS or (TRAINER_KEYS - {"pending"}) - trainer.keys():
        raise bad(f"trainer holds {sorted(map(str, trainer))}, not {sorted(TRAINER_KEYS)}")
    for key in TRAINER_KEYS:
        if not isinstance(trainer.get(key, {}), dict):
            raise bad(f"trainer.{key} is not a dict")
    if not all(isinstance(k, str) for k in trainer["model"]):
        raise bad("trainer.model has a key that is not a string")
    progress = trainer["progress"]
    if progress.keys() != PROGRESS_KEYS:
        raise bad(f"trainer.progress holds {sorted(map(str, progress))}, not {sorted(PROGRESS_KEYS)}")
    if not _is_int(progress["step"]) or progress["step"] != step:
        raise bad(f"trainer.progress.step {str(progress['step'])[:80]!r} is not the checkpoint's step {step}")
    images, seconds = progress["images"], progress["train_seconds"]
    if not _is_int(images) or images < 0:
        raise bad(f"trainer.progress.images {str(images)[:80]!r} is not a non-negative integer")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        raise bad(f"trainer.progress.train_seconds {str(seconds)[:80]!r} is not a finite number")
    if seconds < 0:
        raise bad(f"trainer.progress.train_seconds {seconds!r} is negative")
    rng = trainer["rng"]
    states = [rng.get("cpu"), *([rng["cuda"]] if "cuda" in rng else [])]
    if rng.keys() - {"cpu", "cuda"} or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in states
    ):
        raise bad("trainer.rng is not a random generator state")
    for key, values in trainer.get("pending", {}).items():
        if not isinstance(key, str) or not isinstance(values, list):
            raise bad("trainer.pending is not a list of losses per name")
        if not all(isinstance(t, torch.Tensor) for t in values):
            raise bad(f"trainer.pending.{key} holds something other than tensors")
    return step


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
