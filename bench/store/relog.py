"""Replay an offline journal (``bench.store.journal``) into a tracking store, through ``Tracker``."""

from __future__ import annotations

import os
from pathlib import Path

from bench.store.journal import DONE, JOURNAL, read_journal
from bench.store.tracking import Tracker, dataset_input


def relog(folder: Path, tracker: Tracker) -> str:
    """Replay a journal into ``tracker``'s store; returns the run id that holds it now.

    Into the run it came from when that run is still in the store (the usual case: the store
    went away and came back), else into a new run of the same experiment with the same tags
    and params. Afterwards the journal is renamed ``journal.relogged.jsonl``.
    """
    entries = read_journal(folder)
    head, ops = entries[0], entries[1:]
    run_id = head.get("run_id")
    run = tracker.get_run(run_id) if run_id else None
    client = tracker.client
    if run is None:
        exp = tracker.experiment_id(head["experiment"])
        tags = dict(head.get("tags") or {})
        tags["bench.relogged_from"] = str(run_id)
        created = tracker.call(client.create_run, exp, run_name=head.get("run_name"), tags=tags)
        run_id = created.info.run_id
    else:
        tracker.call(client.update_run, run_id, status="RUNNING")
    tracker.log_batch(run_id, params=head.get("params") or {})
    status = None
    for op in ops:
        kind = op["op"]
        if kind == "params":
            tracker.log_batch(run_id, params=op["params"])
        elif kind == "tags":
            tracker.log_batch(run_id, tags=op["tags"])
        elif kind == "metrics":
            tracker.log_batch(run_id, metrics=op["values"], step=int(op["step"]), ts=int(op["timestamp"]))
        elif kind == "inputs":
            datasets = [dataset_input(op["name"], op["digest"], op["source"], op["profile"])]
            tracker.call(client.log_inputs, run_id, datasets=datasets)
        elif kind == "artifact":
            tracker.call(client.log_artifact, run_id, str(folder / op["file"]), op.get("dir"))
        elif kind == "finish":
            status = op["status"]
    tracker.call(client.set_terminated, run_id, status or "KILLED")
    parent = head.get("parent_run_id")
    if parent:  # the suite run of a store that went away was left open
        p = tracker.get_run(parent)
        if p is not None and p.info.status == "RUNNING":
            tracker.call(client.set_terminated, parent, "FAILED")
    os.replace(folder / JOURNAL, folder / DONE)
    return run_id
