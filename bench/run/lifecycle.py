"""The life of one run, whichever executor carries it out: claim, then skip, resume or start.

Keyed by its config hash (see ``bench.run.checkpoint``), a run goes through:

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

import logging
import os
import tempfile

from bench.files import lock_holder
from bench.run.checkpoint import CHECKPOINT, CheckpointError, RunFolder, bench_home, check_run_state
from bench.run.context import Resume, RunOutcome, SuiteEnv
from bench.run.execute import STORED_CHECKPOINT, Execution
from bench.store.journal import pending_journal
from bench.store.relog import JournalError, relog
from bench.store.tracking import Tracker, failed_metrics, process_alive, redact_uri
from bench.suite import RunSpec

log = logging.getLogger("bench")


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
        return run_or_skip(spec, folder, env)


def run_or_skip(spec: RunSpec, folder: RunFolder, env: SuiteEnv) -> RunOutcome:
    """With the run's claim held: re-log what an earlier offline run left, skip, resume or start."""
    tracker, options = env.tracker, env.options
    pending = pending_journal(folder.path)
    if pending is not None:  # the store is back (``bench run`` checked it): send what waited
        try:
            run_id = relog(pending, tracker)
            log.info("re-logged %s into run %s", pending, run_id)
        except JournalError as e:  # kept as it is; the run goes on as if it had none
            log.warning("not re-logged: %s", e)
    runs = tracker.runs_with_hash(spec.suite.name, spec.config_hash)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    restart = options.restart
    if finished and not restart:
        folder.clear_checkpoint()
        r = finished[0]
        # a later attempt (``--restart``) whose process died: closed, not left RUNNING. Only where its
        # process is known dead: such an attempt is another ``bench run``'s, which ``exclusive`` (one
        # attempt per Ray task) says nothing of, and it may be training on another node
        for other in runs:
            if other.info.status == "RUNNING" and not process_alive(other.data.tags):
                tracker.close_stale(
                    other,
                    f"its bench process ended without closing it (killed); run {r.info.run_id} of the "
                    "same config finished and stands",
                )
        gaps = failed_metrics(r.data.tags)  # what its final evaluation could not compute
        return RunOutcome(
            spec, "FINISHED", r.info.run_id, metrics=dict(r.data.metrics), skipped=True, failed_metrics=gaps
        )
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
    return Execution(spec, env, folder, resume).run()


def find_resume(
    folder: RunFolder, tracker: Tracker, spec: RunSpec, from_store: bool = False
) -> Resume | None:
    """The checkpoint of an unfinished run of this config in this store, if there is one: in the
    run's local folder, else (``from_store``) among the artifacts of its last unfinished run."""
    if from_store and not folder.checkpoint.is_file():
        fetch_stored_checkpoint(folder, tracker, spec)
    try:
        state = folder.load_checkpoint()
        if state is None:
            return None
        if state.get("config_hash") != spec.config_hash or redact_uri(str(state.get("uri"))) != redact_uri(
            tracker.uri
        ):
            log.info(
                "%s: checkpoint of another store or config; %s starts from step 0", folder.path, spec.run_name
            )
            return None
        step = check_run_state(state, folder.checkpoint)  # its structure and types: nothing is trusted
        run = tracker.get_run(state["run_id"])
        if run is None or run.info.status == "FINISHED":
            return None
        if run.data.tags.get("bench.config_hash") != spec.config_hash:
            raise CheckpointError(f"{folder.checkpoint}: names run {run.info.run_id}, of another config")
    except CheckpointError as e:  # the file is left for the run to replace (``Execution.open_run``)
        log.warning("%s; %s starts from step 0", e, spec.run_name)
        return None
    return Resume(run.info.run_id, step, state)


def fetch_stored_checkpoint(folder: RunFolder, tracker: Tracker, spec: RunSpec) -> bool:
    """Copy the last checkpoint kept in the store by an interrupted run of this config into the
    run's local folder (a task retried on another node continues where the lost one stopped)."""
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
