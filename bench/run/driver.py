"""Drive a suite: plan its runs, open the suite run, hand the runs to an executor, close.

``run_suite`` is what ``bench run`` calls. Planning (``bench.suite.expand``: suite -> run specs)
is separate from execution: an executor (``bench.run.executors``, ``bench.run.ray``) carries
each spec through ``bench.run.lifecycle``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from bench.config import Suite
from bench.data import from_config
from bench.run.context import RunOutcome, StopRequest, StoreLost, SuiteEnv, finish_quietly
from bench.run.executors import Executor, ExecutorError, LocalExecutor, ProcessExecutor
from bench.run.hooks import SuiteHooks
from bench.run.progress import default_hooks
from bench.run.reference import log_reference
from bench.store.tracking import Tracker, TrackingLost, process_alive
from bench.suite import expand

log = logging.getLogger("bench")


def run_suite(
    suite: Suite,
    suite_yaml: str,
    tracker: Tracker,
    device: torch.device,
    hooks: SuiteHooks | None = None,
    restart: bool = False,
    executor: Any = None,
) -> list[RunOutcome]:
    """Run every (model, seed) of the suite; returns one outcome per run, in order.

    Planning (``expand``: suite -> run specs) is separate from execution: ``executor`` (a
    ``bench.run.executors`` executor, sequential in this process by default) carries the runs out.
    ``hooks`` sees the suite as it goes (progress, step-indexed images): ``default_hooks()`` if
    None. Raises ``KeyboardInterrupt`` when stopped (the current runs checkpointed and KILLED)
    and ``StoreLost`` when the tracking store stopped answering.
    """
    t_suite = time.perf_counter()
    hooks = hooks if hooks is not None else default_hooks()
    executor = executor if executor is not None else LocalExecutor()
    t0 = time.perf_counter()
    data = from_config(suite.dataset)
    data_dev = data.to(device)
    data_seconds = time.perf_counter() - t0
    specs = expand(suite)
    close_stale_suites(tracker, suite.name)
    parent = tracker.start_suite(suite.name, suite_yaml, len(specs))
    parent.params({"dataset.checksum": data.checksum, "dataset.source": data.source, "device": str(device)})
    parent.tags({"bench.executor": executor.describe()})
    if restart:
        parent.tags({"bench.restart": "true"})
    outcomes: dict[int, RunOutcome] = {}
    stop = StopRequest()
    env = SuiteEnv(suite, data_dev, tracker, parent, device, executor.options(restart), stop, hooks)

    def record(i: int, outcome: RunOutcome) -> None:
        if outcome.offline:
            log.warning(
                "%s: finished offline; its results wait in %s", outcome.spec.run_name, outcome.offline
            )
        outcomes[i] = outcome
        hooks.run_finished(outcome)

    # the real-data row first (cached by content): even an interrupted suite's report has it
    log_reference(tracker, suite.name, data_dev, suite.eval, device)
    hooks.suite_started(suite, len(specs))
    try:
        with stop.installed():
            executor.run(specs, env, record)
    except KeyboardInterrupt:
        finish_quietly(parent, "KILLED")
        raise
    except TrackingLost as e:
        raise StoreLost(str(e), [outcomes[i] for i in sorted(outcomes)]) from None
    finally:
        hooks.suite_finished([outcomes[i] for i in sorted(outcomes)])
    done = [outcomes[i] for i in sorted(outcomes)]
    lost = [o for o in done if o.offline]
    if lost:
        raise StoreLost(lost[0].reason, done)
    failed = sum(o.status != "FINISHED" for o in done)
    try:
        parent.tags(
            {
                "bench.finished": len(done) - failed,
                "bench.failed": failed,
                "bench.skipped": sum(o.skipped for o in done),
                "bench.resumed": sum(bool(o.resumed_from) for o in done),
            }
        )
        parent.metrics(0, {"data_seconds": data_seconds, "suite_seconds": time.perf_counter() - t_suite})
        parent.finish("FINISHED" if not failed else "FAILED")
    except TrackingLost as e:  # every run is in the store; only the suite run stays open
        raise StoreLost(str(e), done) from None
    return done




def close_stale_suites(tracker: Tracker, suite_name: str) -> None:
    """Suite runs left RUNNING by a bench process that no longer exists become KILLED."""
    for r in tracker.runs(suite_name, kind="suite"):
        if r.info.status == "RUNNING" and not process_alive(r.data.tags):
            tracker.close_stale(r, "its bench process ended without closing it (killed)")


def make_executor(name: str, jobs: int | None, ray_address: str | None, max_retries: int) -> Executor:
    """The executor the command line asks for; ``ExecutorError`` for a request that cannot be met."""
    if name == "ray":
        if jobs is not None:
            raise ExecutorError("--jobs: not with --executor ray (Ray places the runs itself)")
        from bench.run.ray import RayExecutor

        return RayExecutor(ray_address, max_retries)
    if ray_address is not None:
        raise ExecutorError("--ray-address: only with --executor ray")
    if jobs is not None and jobs != 1:
        return ProcessExecutor(jobs)
    return LocalExecutor()
