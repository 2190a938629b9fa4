"""What every part of a run shares: the suite's environment, the options an executor passes, the
outcome a run reports, and the stop request that Ctrl-C and SIGTERM set."""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.data import ImageData
from bench.run.hooks import SuiteHooks
from bench.store.tracking import RunLogger, Tracker
from bench.suite import RunSpec, Suite

log = logging.getLogger("bench")


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device of this machine (syntax, no CUDA, no such CUDA index), or None."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        return f"device must be auto, cpu, mps, cuda or cuda:N (got {name!r})"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{name!r}: this machine has no CUDA device (use cpu or auto)"
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            return f"{name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    if name == "mps" and not torch.backends.mps.is_available():
        return "'mps': this machine has no MPS device (use cpu or auto)"
    return None


def local_folder_problem(uri: str) -> str | None:
    """Why a folder bench writes beside a run cannot be written into: the run folders
    (checkpoints, journals: ``$BENCH_HOME``, else ``.bench`` beside a sqlite store) or the cache
    ``$BENCH_CACHE_DIR`` when set, with the setting that names it. Checked before any run exists:
    a run would otherwise fail at its first checkpoint, or a metric at its cache."""
    import os

    from bench.cache import cache_dir
    from bench.files import folder_problem
    from bench.run.checkpoint import bench_home
    from bench.store.tracking import sqlite_path

    db = sqlite_path(uri)
    for name, path in (("BENCH_HOME", bench_home(uri)), ("BENCH_CACHE_DIR", cache_dir())):
        if name == "BENCH_HOME" and not os.environ.get(name) and db and folder_problem(db.parent):
            continue  # the run folders go beside a store that cannot be there: the store's check says so
        if name == "BENCH_CACHE_DIR" and not os.environ.get(name):
            continue  # the default cache is needed by some metrics only: the one that needs it says so
        problem = folder_problem(path)
        if problem:
            set_by = os.environ.get(name)
            where = f"{name}={set_by}" if set_by else f"{path} (set {name} to choose another)"
            return f"{where}: {problem}"
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # FINISHED | FAILED | KILLED
    run_id: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # finished by an earlier `bench run`: not trained again
    resumed_from: int | None = None  # the checkpoint step it continued from
    offline: Path | None = None  # the store was lost: what it logged waits here to be re-logged
    seconds: float = 0.0  # wall time of the run in the process that carried it out
    failed_metrics: dict[str, str] = field(default_factory=dict)  # metric: why (a FINISHED run's gaps)


class StoreLost(Exception):
    """The tracking store stopped answering; the suite stopped. Holds the outcomes so far."""

    def __init__(self, message: str, outcomes: list[RunOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


class StopRequest:
    """First Ctrl-C (or SIGTERM): finish the current step, checkpoint, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        log.warning(
            "%s: stopping after the current step; the run is checkpointed and `bench run` resumes it "
            "(press Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


@dataclass
class Resume:
    """An unfinished run to continue: from its checkpoint, or from step 0 when it has none."""

    run_id: str
    step: int
    state: dict | None


@dataclass(frozen=True)
class RunOptions:
    """How an executor asks a run to be carried out (the same for every run of a suite)."""

    restart: bool = False  # train even when a FINISHED run of this config exists
    # no other live attempt of this run can exist (a Ray task retried after its worker or node
    # died): a RUNNING run of this config is an abandoned attempt, wherever it ran
    exclusive: bool = False
    # also keep each checkpoint among the run's artifacts, where every node can read it
    store_checkpoints: bool = False


@dataclass
class SuiteEnv:
    """What an executor gets to carry out a suite's runs (see ``bench.run.executors``)."""

    suite: Suite
    data: ImageData  # on ``device``
    tracker: Tracker
    parent: RunLogger
    device: torch.device
    options: RunOptions
    stop: StopRequest
    hooks: SuiteHooks


def finish_quietly(run: RunLogger, status: str) -> None:
    try:
        run.finish(status)
    except Exception as e:  # the store may be what failed
        log.warning("could not mark the suite run %s: %s", status, e)
