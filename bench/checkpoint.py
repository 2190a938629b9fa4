"""A run's local folder: its checkpoints, its claim, and what it could not send to the store.

Every run has a folder keyed by its config hash (the resolved run config + the bench version),
under the bench home: ``$BENCH_HOME``, else ``.bench/`` beside a sqlite tracking database,
else ``./.bench``::

    <home>/runs/<config_hash>/
        checkpoint.pt   the trainer state at the last checkpoint
        claim.lock      locked (flock) by the process training the run; holds its pid
        offline/        what could not reach the tracking store (see ``bench.journal``)

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
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no claims, one process per store
    fcntl = None  # type: ignore[assignment]

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be loaded safely; the message names the file."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    m = re.match(r"^sqlite(\+\w+)?:///(.+)$", uri)
    return Path(m.group(2)).expanduser().resolve() if m else None


def bench_home(uri: str) -> Path:
    """Where local run folders live for the store at ``uri``."""
    env = os.environ.get("BENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    db = sqlite_path(uri)
    return (db.parent if db else Path.cwd()) / ".bench"


# --------------------------------------------------------------------------- atomic files


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` into a temp file, fsync it, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


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


# --------------------------------------------------------------------------- claims


class Claim:
    """An exclusive flock on a run's ``claim.lock``; released by ``release`` or by process death."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(path: Path) -> Claim | None:
    """Lock ``path`` without waiting; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return Claim(fd, path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Claim(fd, path)


def wait_lock(path: Path, should_stop: Callable[[], bool] = lambda: False, poll: float = 0.5) -> Claim | None:
    """Lock ``path``, waiting for its holder; None if ``should_stop()`` turns true meanwhile.

    Polls instead of blocking in flock so that Ctrl-C stays responsive.
    """
    while True:
        claim = try_lock(path)
        if claim is not None or should_stop():
            return claim
        time.sleep(poll)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block (waits for it)."""
    claim = wait_lock(path, poll=0.05)
    try:
        yield
    finally:
        if claim is not None:
            claim.release()


def lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid else "another process"


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
