"""Local files that must survive a crash or a second process: atomic writes, advisory locks, and
whether a folder can be written into.

Every file bench writes and reads back (checkpoints, cache entries, run folders) goes through
``atomic_write``; claims on a run and the sqlite store's first open go through the locks.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: locks are no-ops
    fcntl = None


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` into a temp file, fsync it, and rename it into place.

    The temp file is ``.<name>.<host>.<pid>.tmp``; one left by a killed writer on this host is
    removed by the next write of the same file (a live writer's, or another host's, is left alone).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        cause = _os_error(e)
        if cause is None or (cause is e and e.filename):
            raise
        # a full disk, a quota, a file size limit: said as such, naming the file (torch.save, for
        # one, hides the write's OSError behind a RuntimeError of its own)
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
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


_HOST = (platform.node() or "localhost").replace(os.sep, "_")


def _remove_dead_temps(path: Path) -> None:
    """Remove the temp files of ``path`` that writers on this host left when they were killed."""
    prefix = f".{path.name}.{_HOST}."
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :].removesuffix(".tmp")
        if pid.isdigit() and not _process_alive(int(pid)):
            try:
                (path.parent / name).unlink()
            except OSError:  # gone already, or not ours to remove
                pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no valid pid
        return pid > 0
    return pid > 0


def _os_error(e: BaseException) -> OSError | None:
    """The operating system's error behind ``e`` (``e`` itself, or one it was raised while handling)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


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


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (made) a folder to write into: it, or a folder above it, is a file,
    or the nearest folder there is cannot be written into by this process (permissions, a
    read-only mount). Nothing is written to find out."""
    for p in (path, *path.parents):
        try:
            there = p.exists() or p.is_symlink()
        except OSError as e:  # a folder above it this process cannot enter
            return f"{p} cannot be looked at here ({e.strerror})"
        if there:
            if not p.is_dir():
                return f"{p} exists and is not a folder" if p == path else f"{p} is a file, not a folder"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"{p} cannot be written into here"
            return None
    return None
