"""Executors: how the run specs of a suite are carried out.

Planning (``bench.suite.expand``: suite -> run specs) is separate from execution. Every executor
carries a run out through the same function (``bench.run.lifecycle.run_claimed``: claim, then skip,
resume or train), so finished runs are skipped and interrupted runs resumed the same way
whichever executor ran them before.

- ``LocalExecutor`` (default): one run after the other, in this process.
- ``ProcessExecutor`` (``bench run --jobs N``): N worker processes on this machine; the CPU
  cores are divided between them (``resources.cpus`` threads each when the suite sets it), and
  when the machine has several GPUs each worker gets its own.
- ``RayExecutor`` (``bench run --executor ray [--ray-address ADDR]``, in ``bench.run.ray``):
  each run is a Ray task asking for the suite's ``resources``.

A worker process needs nothing from its parent but a ``Job`` (picklable): it loads the dataset
as the parent does, connects to the tracking store by URI and logs its run as a child of the
suite's parent run.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any

import torch

from bench.config import Suite
from bench.run.context import RunOptions, RunOutcome, StopRequest, SuiteEnv
from bench.run.lifecycle import run_claimed
from bench.run.memory import keep_freed_memory
from bench.run.threads import available_cores, set_threads
from bench.suite import RunSpec

log = logging.getLogger("bench")

Record = Callable[[int, RunOutcome], None]


class ExecutorError(Exception):
    """The executor cannot run this suite (bad request, missing extra): exit 2, nothing written."""


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory) and took its run with it."""


class Executor:
    """Base: runs ``specs`` and calls ``record(index, outcome)`` as each run ends."""

    name = "local"

    def describe(self) -> str:
        return self.name

    def options(self, restart: bool) -> RunOptions:
        return RunOptions(restart=restart)

    def start(self, suite: Suite, uri: str) -> None:
        """Check (and connect) before anything is written; raises ``ExecutorError``."""

    def run(self, specs: Sequence[RunSpec], env: SuiteEnv, record: Record) -> None:
        raise NotImplementedError


class LocalExecutor(Executor):
    """One run after the other in this process (a run claimed by another process is revisited
    at the end, once that process released it)."""

    def run(self, specs: Sequence[RunSpec], env: SuiteEnv, record: Record) -> None:
        threads = torch.get_num_threads()
        cpus = env.suite.resources.cpus
        if cpus:
            set_threads(int(cpus))
        try:
            self._run(specs, env, record)
        finally:
            torch.set_num_threads(threads)  # the caller's setting, when bench runs inside a program

    def _run(self, specs: Sequence[RunSpec], env: SuiteEnv, record: Record) -> None:
        deferred: list[int] = []
        for i, spec in enumerate(specs):
            if env.stop():
                raise KeyboardInterrupt
            outcome = run_claimed(i, len(specs), spec, env)
            if outcome is None:
                deferred.append(i)
                continue
            record(i, outcome)
            if outcome.offline:
                return
        for i in deferred:  # wait for the other process, then check its work
            outcome = run_claimed(i, len(specs), specs[i], env, wait=True)
            record(i, outcome)
            if outcome.offline:
                return


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Job:
    """One run for a worker process: everything it needs, picklable."""

    index: int
    n_runs: int
    spec: RunSpec
    uri: str
    retry_seconds: float
    parent_id: str
    device: str
    options: RunOptions
    threads: int | None
    wait: bool = False  # wait for the run's claim instead of handing the run back
    shared_cache: str | None = None  # a run whose ``cache/`` artifacts seed this worker's cache


_worker: dict[str, Any] = {"slot": None, "stop": None, "data": {}, "trackers": {}, "caches": set()}
_busy = threading.Lock()  # held while the worker carries a run out


def _init_worker(slots: Any, level: int) -> None:
    """In each ``--jobs`` worker: its slot (for GPU assignment), logging, and signal handlers that
    stay installed between runs (Ctrl-C reaches the whole process group: an idle worker must not die
    of it, a busy one checkpoints its run and stops)."""
    _worker["slot"] = slots.get()
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop._handle)
    signal.signal(signal.SIGTERM, stop._handle)
    _worker["stop"] = stop
    _watch_parent(stop)


def _watch_parent(stop: StopRequest) -> None:
    """End this worker when its ``bench run`` process dies (kill -9, out of memory): its run, if
    it has one, stops as after Ctrl-C (checkpointed, KILLED; the next ``bench run`` resumes it),
    then the worker exits. Left alone, it would wait for work forever, holding its memory and
    device (the pool's queues keep both ends of their pipes open in every worker)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
        log.warning("worker %d: its bench run process %s ended; stopping", os.getpid(), parent.pid)
        stop.requested = True
        with _busy:  # the run in progress, if any, checkpointed and closed first
            os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def _worker_device(name: str) -> torch.device:
    from bench.run.context import resolve_device

    device = resolve_device(name)
    slot = _worker["slot"]
    if device.type == "cuda" and device.index is None and slot is not None and torch.cuda.device_count() > 1:
        device = torch.device("cuda", slot % torch.cuda.device_count())  # one GPU per worker
    return device


def work(job: Job) -> RunOutcome | None:
    """Carry one run out in this (worker) process; None when another process holds its claim."""
    if _worker["stop"] is None:  # not a --jobs worker (a Ray task)
        return _work(job)
    with _busy:  # a worker whose parent died exits once this returns (``_watch_parent``)
        return _work(job)


def _work(job: Job) -> RunOutcome | None:
    from bench.data import from_config
    from bench.run.progress import default_hooks
    from bench.store.tracking import RunLogger, Tracker

    keep_freed_memory()  # once per worker process
    if job.threads:
        set_threads(job.threads)
    device = _worker_device(job.device)
    trackers = _worker["trackers"]
    if job.uri not in trackers:
        trackers[job.uri] = Tracker(job.uri, retry_seconds=job.retry_seconds)
    tracker = trackers[job.uri]
    d = job.spec.suite.dataset
    key = (d.name, d.root, d.train_size, d.test_size, str(device))
    if key not in _worker["data"]:  # once per worker process
        _worker["data"][key] = from_config(d).to(device)
    if job.shared_cache and job.shared_cache not in _worker["caches"]:
        from bench.cache import fetch_shared

        fetch_shared(tracker, job.shared_cache)
        _worker["caches"].add(job.shared_cache)
    stop = _worker["stop"] or StopRequest()
    env = SuiteEnv(
        job.spec.suite,
        _worker["data"][key],
        tracker,
        RunLogger(tracker, job.parent_id),
        device,
        job.options,
        stop,
        default_hooks(progress=False),
    )
    try:
        if _worker["stop"] is None:  # not a --jobs worker (a Ray task): handle signals for this run
            with stop.installed():
                return run_claimed(job.index, job.n_runs, job.spec, env, wait=job.wait)
        return run_claimed(job.index, job.n_runs, job.spec, env, wait=job.wait)
    except KeyboardInterrupt:  # the run is checkpointed and marked KILLED
        return RunOutcome(job.spec, "KILLED", "", "interrupted")


def make_jobs(specs: Sequence[RunSpec], env: SuiteEnv, threads: int | None, device: str) -> list[Job]:
    return [
        Job(
            i,
            len(specs),
            spec,
            env.tracker.uri,
            env.tracker.retry_seconds,
            env.parent.run_id,
            device,
            env.options,
            threads,
        )
        for i, spec in enumerate(specs)
    ]


class ProcessExecutor(Executor):
    """``--jobs N``: the runs in N worker processes on this machine."""

    name = "jobs"

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ExecutorError(f"--jobs: {jobs} is not a positive number of processes")
        self.jobs = jobs

    def describe(self) -> str:
        return f"jobs={self.jobs}"

    def threads(self, suite: Suite) -> int:
        """Threads per worker: the suite's ``resources.cpus``, else the cores divided among workers."""
        if suite.resources.cpus:
            return max(1, int(suite.resources.cpus))
        return max(1, available_cores() // self.jobs)

    def run(self, specs: Sequence[RunSpec], env: SuiteEnv, record: Record) -> None:
        threads = self.threads(env.suite)
        jobs = make_jobs(specs, env, threads, str(env.device))  # "cuda": a GPU per worker, see _worker_device
        workers = min(self.jobs, len(jobs))
        log.info("%d runs in %d processes, %d threads each", len(jobs), workers, threads)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        slots = ctx.SimpleQueue()
        for k in range(workers):
            slots.put(k)
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, log.getEffectiveLevel())
        )
        try:
            self._drive(pool, jobs, env, record)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _drive(self, pool: ProcessPoolExecutor, jobs: list[Job], env: SuiteEnv, record: Record) -> None:
        running: dict[Future, Job] = {pool.submit(work, j): j for j in jobs}
        deferred: list[Job] = []
        stopping = forwarded = offline = False
        while running:
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            if env.stop() and not stopping:
                stopping = True
                for f in running:
                    f.cancel()  # those not started yet
            if stopping and not forwarded and env.stop.signum == signal.SIGTERM:
                forwarded = True  # a SIGTERM to this process alone: pass it on (Ctrl-C reached them all)
                for p in multiprocessing.active_children():
                    p.terminate()
            for f in done:
                job = running.pop(f)
                if f.cancelled():
                    continue
                try:
                    outcome = f.result()
                except BrokenProcessPool:
                    raise WorkerLost(
                        f"a worker process died while running {job.spec.run_name} (killed, or out of "
                        "memory); finished runs are kept: run the same command again to resume the others"
                    ) from None
                if outcome is None:
                    deferred.append(replace(job, wait=True))
                elif outcome.status == "KILLED" and not outcome.run_id:
                    stopping = True
                else:
                    record(job.index, outcome)
                    if outcome.offline and not offline:  # the store is gone: start nothing new
                        offline = True
                        for g in running:
                            g.cancel()
            if not running and deferred and not (stopping or offline):
                running = {pool.submit(work, j): j for j in deferred}
                deferred = []
        if stopping:
            raise KeyboardInterrupt
