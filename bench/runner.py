"""Execute a suite: for each run spec, build the model, train it under the budget, evaluate it,
and record everything in the tracking store.

The life of a run (keyed by its config hash, see ``bench.checkpoint``):

1. claim it (a lock in its local folder), so that two ``bench run`` on one store never train
   the same run; a run claimed by another process is left to it and revisited at the end;
2. skip it when the store already holds a FINISHED run with the same config hash;
3. resume it when its folder holds a checkpoint of an unfinished run of this store, else start
   a new run; checkpoints are written every ``checkpoint.every`` steps;
4. end it FINISHED, or FAILED with a ``failure_reason`` tag (divergence or an error: the suite
   goes on with the next run), or KILLED when interrupted (Ctrl-C, SIGTERM: the run is
   checkpointed first and the suite stops), or offline when the store stopped answering (the
   run finishes, its results wait in its folder to be re-logged, and the suite stops).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.checkpoint import CHECKPOINT, CheckpointError, RunFolder, bench_home, lock_holder
from bench.data import ImageData, load_dataset
from bench.grids import reconstruction_grid, sample_grid
from bench.hooks import RunContext, SuiteHooks, default_hooks
from bench.metrics import evaluate
from bench.metrics.reference import log_reference
from bench.metrics.samplers import fit_latent_sampler
from bench.models import build_model
from bench.suite import RunSpec, Suite, expand, flatten
from bench.tracking import RunLogger, Tracker, TrackingLost, process_alive
from bench.train import Diverged, Interrupted, Progress, Trainer

log = logging.getLogger("bench")


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
    """What an executor gets to carry out a suite's runs (see ``bench.executors``)."""

    suite: Suite
    data: ImageData  # on ``device``
    tracker: Tracker
    parent: RunLogger
    device: torch.device
    options: RunOptions
    stop: StopRequest
    hooks: SuiteHooks


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
    ``bench.executors`` executor, sequential in this process by default) carries the runs out.
    ``hooks`` sees the suite as it goes (progress, step-indexed images): ``default_hooks()`` if
    None. Raises ``KeyboardInterrupt`` when stopped (the current runs checkpointed and KILLED)
    and ``StoreLost`` when the tracking store stopped answering.
    """
    from bench.executors import LocalExecutor

    t_suite = time.perf_counter()
    hooks = hooks if hooks is not None else default_hooks()
    executor = executor if executor is not None else LocalExecutor()
    t0 = time.perf_counter()
    data = load_dataset(
        suite.dataset.name, suite.dataset.root, suite.dataset.train_size, suite.dataset.test_size
    )
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

    hooks.suite_started(suite, len(specs))
    try:
        with stop.installed():
            executor.run(specs, env, record)
    except KeyboardInterrupt:
        _finish_quietly(parent, "KILLED")
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
        log_reference(
            tracker, suite.name, data_dev, suite.eval, device
        )  # the real-data row, once per protocol
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


def run_claimed(
    i: int,
    n: int,
    spec: RunSpec,
    env: SuiteEnv,
    wait: bool = False,
) -> RunOutcome | None:
    """Claim the run's folder and carry the run out (``run_or_skip``); None when another process
    holds the claim and ``wait`` is false (the caller comes back to it later)."""
    folder = RunFolder(bench_home(env.tracker.uri), spec.config_hash)
    claim = folder.wait_claim(env.stop) if wait else folder.try_claim()
    if claim is None:
        if wait:  # stopped while waiting
            raise KeyboardInterrupt
        log.info(
            "[%d/%d] %s: being trained by %s; coming back to it at the end",
            i + 1,
            n,
            spec.run_name,
            lock_holder(folder.claim_file),
        )
        return None
    with claim:
        return run_or_skip(
            spec, folder, env.data, env.tracker, env.parent, env.device, env.options, env.stop, env.hooks
        )


def _finish_quietly(run: RunLogger, status: str) -> None:
    try:
        run.finish(status)
    except Exception as e:  # the store may be what failed
        log.warning("could not mark the suite run %s: %s", status, e)


def close_stale_suites(tracker: Tracker, suite_name: str) -> None:
    """Suite runs left RUNNING by a bench process that no longer exists become KILLED."""
    for r in tracker.runs(suite_name, kind="suite"):
        if r.info.status == "RUNNING" and not process_alive(r.data.tags):
            tracker.close_stale(r, "its bench process ended without closing it (killed)")


def run_or_skip(
    spec: RunSpec,
    folder: RunFolder,
    data: ImageData,
    tracker: Tracker,
    parent: RunLogger,
    device: torch.device,
    options: RunOptions,
    stop: StopRequest,
    hooks: SuiteHooks | None = None,
) -> RunOutcome:
    """With the run's claim held: re-log what an earlier offline run left, skip, resume or start."""
    from bench.journal import pending_journal, relog

    pending = pending_journal(folder.path)
    if pending is not None:  # the store is back (``bench run`` checked it): send what waited
        run_id = relog(pending, tracker)
        log.info("re-logged %s into run %s", pending, run_id)
    runs = tracker.runs_with_hash(spec.suite.name, spec.config_hash)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    restart = options.restart
    if finished and not restart:
        folder.clear_checkpoint()
        r = finished[0]
        return RunOutcome(spec, "FINISHED", r.info.run_id, metrics=dict(r.data.metrics), skipped=True)
    resume = None if restart else find_resume(folder, tracker, spec, options.store_checkpoints)
    # we hold the claim, so a RUNNING run of this config on this machine has lost its process
    ended = [
        r
        for r in runs
        if r.info.status == "KILLED"
        or (r.info.status == "RUNNING" and (options.exclusive or not process_alive(r.data.tags)))
    ]
    if resume is None and ended and not restart:
        # interrupted before its first checkpoint: train it again from step 0, in the same MLflow run
        resume = Resume(ended[0].info.run_id, 0, None)
    for r in ended:
        if r.info.status == "RUNNING" and r.info.run_id != (resume.run_id if resume else None):
            tracker.close_stale(r, "its bench process ended without closing it (killed)")
    return run_one(
        spec, data, tracker, parent, device, folder, resume, stop, hooks, options.store_checkpoints
    )


def find_resume(
    folder: RunFolder, tracker: Tracker, spec: RunSpec, from_store: bool = False
) -> Resume | None:
    """The checkpoint of an unfinished run of this config in this store, if there is one: in the
    run's local folder, else (``from_store``) among the artifacts of its last unfinished run."""
    if from_store and not folder.checkpoint.is_file():
        fetch_stored_checkpoint(folder, tracker, spec)
    try:
        state = folder.load_checkpoint()
    except CheckpointError as e:
        log.warning("%s; %s starts from step 0", e, spec.run_name)
        return None
    if state is None:
        return None
    if state.get("config_hash") != spec.config_hash or state.get("uri") != tracker.uri:
        log.info(
            "%s: checkpoint of another store or config; %s starts from step 0", folder.path, spec.run_name
        )
        return None
    run = tracker.get_run(str(state.get("run_id")))
    if run is None or run.info.status == "FINISHED":
        return None
    return Resume(run.info.run_id, int(state["step"]), state)


STORED_CHECKPOINT = "checkpoint"  # artifact folder of a run's last checkpoint, when kept in the store


def fetch_stored_checkpoint(folder: RunFolder, tracker: Tracker, spec: RunSpec) -> bool:
    """Copy the last checkpoint kept in the store by an interrupted run of this config into the
    run's local folder (a task retried on another node continues where the lost one stopped)."""
    import tempfile

    # interrupted runs only: a diverged run would diverge again (its local checkpoint is deleted)
    unfinished = [
        r
        for r in tracker.runs_with_hash(spec.suite.name, spec.config_hash)
        if r.info.status in ("RUNNING", "KILLED")
    ]
    for r in sorted(unfinished, key=lambda r: r.info.start_time or 0, reverse=True):
        folder.path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.path) as tmp:  # same file system: atomic rename
            try:
                got = tracker.download(r.info.run_id, f"{STORED_CHECKPOINT}/{CHECKPOINT}", tmp)
            except Exception:  # this run kept no checkpoint in the store
                continue
            os.replace(got, folder.checkpoint)
        log.info("%s: fetched the checkpoint of run %s from the store", spec.run_name, r.info.run_id)
        return True
    return False


def run_one(
    spec: RunSpec,
    data: ImageData,
    tracker: Tracker,
    parent: RunLogger,
    device: torch.device,
    folder: RunFolder | None = None,
    resume: Resume | None = None,
    stop: StopRequest | None = None,
    hooks: SuiteHooks | None = None,
    store_checkpoints: bool = False,
) -> RunOutcome:
    """Train and evaluate one run (from its checkpoint when resuming), logging as it goes."""
    t_run = time.perf_counter()
    clock = {"eval_seconds": 0.0, "checkpoint_seconds": 0.0}
    suite = spec.suite
    folder = folder or RunFolder(bench_home(tracker.uri), spec.config_hash)
    hooks = hooks or SuiteHooks()
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.params, data.image_shape).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(
        model, data, suite.budget, spec.seed, suite.tracking.log_every, suite.eval.every, train=suite.train
    )
    if resume is not None:
        if resume.state is not None:
            trainer.load_state_dict(resume.state["trainer"])
        run = tracker.resume_run(resume.run_id, offline_dir=folder.offline)
        run.tags({"bench.resumed_from_step": resume.step, "bench.threads": torch.get_num_threads()})
        if resume.state is None:  # it may have died before logging its config
            folder.clear_checkpoint()
            run.params(flatten(spec.resolved()))
            run.text("config.json", json.dumps(spec.resolved(), indent=2, default=str))
            log.info(
                "%s: run %s stopped before its first checkpoint; training it again", spec.run_name, run.run_id
            )
        else:
            log.info(
                "%s: resuming run %s from its checkpoint at step %d", spec.run_name, run.run_id, resume.step
            )
    else:
        folder.clear_checkpoint()
        run = tracker.start_run(
            parent,
            {
                "family": spec.family,
                "model": spec.model,
                "label": spec.label,
                "seed": str(spec.seed),
                "bench.config_hash": spec.config_hash,
                "bench.suite": suite.name,
                "bench.threads": str(torch.get_num_threads()),
            },
            spec.run_name,
            offline_dir=folder.offline,
        )
        run.params(flatten(spec.resolved()))
        run.text("config.json", json.dumps(spec.resolved(), indent=2, default=str))
    folder.write_info(
        {"uri": tracker.uri, "run_id": run.run_id, "run_name": spec.run_name, "suite": suite.name}
    )

    hooks.run_started(RunContext(spec, run, model, data, trainer, device))

    def on_log(step: int, losses: dict[str, float]) -> None:
        run.losses(step, losses)
        hooks.logged(step, losses)

    def timed_evaluate() -> dict:
        t0 = time.perf_counter()
        results = evaluate(model, data, suite.eval, spec.seed, device)
        clock["eval_seconds"] += time.perf_counter() - t0
        return results

    def on_eval(step: int) -> None:
        results = timed_evaluate()
        run.results(step, results)
        hooks.evaluated(step, results)

    def checkpoint(step: int) -> None:
        t0 = time.perf_counter()
        run.flush()  # the store holds every value up to this step before the checkpoint says so
        folder.save_checkpoint(
            {
                "run_id": run.run_id,
                "uri": tracker.uri,
                "config_hash": spec.config_hash,
                "step": step,
                "trainer": trainer.state_dict(),
            }
        )
        if store_checkpoints:  # where a retry on another node finds it
            run.file(folder.checkpoint, STORED_CHECKPOINT)
        clock["checkpoint_seconds"] += time.perf_counter() - t0

    def outcome(status: str, reason: str = "", metrics: dict[str, float] | None = None) -> RunOutcome:
        offline = folder.path if run.offline else None
        if offline is not None:
            reason = run.lost_reason
        return RunOutcome(
            spec,
            status,
            run.run_id,
            reason,
            metrics or {},
            resumed_from=resume.step if resume else None,
            offline=offline,
            seconds=time.perf_counter() - t_run,
        )

    try:
        progress = trainer.run(
            on_log=on_log,
            on_eval=on_eval,
            on_checkpoint=checkpoint,
            checkpoint_every=suite.checkpoint.every,
            should_stop=stop or (lambda: False),
        )
        t0 = time.perf_counter()
        fit_latent_sampler(model, data, suite.eval.batch_size)  # post-training fits (the AE's Gaussian)
        clock["eval_seconds"] += time.perf_counter() - t0
        results = timed_evaluate()
        run.results(progress.step, results)
        hooks.evaluated(progress.step, results)
        log_artifacts(run, model, data, spec, device)
        # what the run cost; this process's share only when it was resumed
        clock["wall_seconds"] = time.perf_counter() - t_run
        clock["tracking_seconds"] = run.seconds
        run.metrics(progress.step, cost_metrics(progress, n_params, device) | clock)
    except Diverged as e:
        run.tags({"failure_reason": str(e)})
        run.finish("FAILED")
        folder.clear_checkpoint()  # resuming would diverge again: a new `bench run` starts afresh
        return outcome("FAILED", str(e))
    except Interrupted as e:
        checkpoint(e.step)
        run.tags({"failure_reason": f"interrupted at step {e.step}; `bench run` again resumes it"})
        run.finish("KILLED")
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the last periodic checkpoint stands
        run.tags({"failure_reason": "interrupted (Ctrl-C)"})
        _finish_quietly(run, "KILLED")
        raise
    except Exception as e:  # any other error fails this run only; its checkpoint stays for a retry
        log.error("%s failed:\n%s", spec.run_name, traceback.format_exc())
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        run.tags({"failure_reason": reason})
        run.text("traceback.txt", traceback.format_exc())
        run.finish("FAILED")
        return outcome("FAILED", reason)
    metrics = {k: r.value for k, r in results.items()}
    if run.offline:  # keep the final state beside the journal until it is re-logged
        checkpoint(progress.step)
    run.finish("FINISHED")
    if not run.offline:
        folder.clear_checkpoint()
    return outcome("FINISHED", metrics=metrics)


def cost_metrics(progress: Progress, n_params: int, device: torch.device) -> dict[str, float]:
    """What the run cost: budget used, size, throughput, peak memory."""
    out = {
        "budget_steps": progress.step,
        "budget_images": progress.images,
        "train_seconds": progress.train_seconds,
        "images_per_s": progress.images_per_s,
        "param_count": n_params,
    }
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_artifacts(run: RunLogger, model, data: ImageData, spec: RunSpec, device: torch.device) -> None:
    """Sample grid, reconstruction grid (encoder families), state_dict and the spec to rebuild it."""
    run.image("samples.png", sample_grid(model, spec.seed, device))
    if model.has_encoder:
        run.image("reconstructions.png", reconstruction_grid(model, data, device))
    run.torch_state("model/state_dict.pt", model.state_dict())
    run.text(
        "model/spec.json",
        json.dumps({"model": spec.model, "params": spec.params, "image_shape": list(data.image_shape)}),
    )
