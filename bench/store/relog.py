"""Replay an offline journal (``bench.store.journal``) into a tracking store, through ``Tracker``."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from bench.store.journal import DONE, JOURNAL, read_journal
from bench.store.tracking import Tracker, dataset_input


class JournalError(ValueError):
    """A journal entry that bench will not replay; the message names the journal and the entry."""


def artifact_file(folder: Path, op: dict[str, Any], line: int) -> Path:
    """The file of an ``artifact`` entry, which must lie inside the journal's own folder: a
    relative path without ``..`` whose real path (symlinks resolved) is a file under the folder.
    Its artifact folder (``dir``) must be relative and without ``..`` too."""
    where = f"{folder / JOURNAL}: entry {line}"
    rel, dst = op.get("file"), op.get("dir")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise JournalError(f"{where}: artifact file {rel!r} is not a path inside the journal's folder")
    if dst is not None and (
        not isinstance(dst, str) or PurePosixPath(dst).is_absolute() or ".." in PurePosixPath(dst).parts
    ):
        raise JournalError(f"{where}: artifact folder {dst!r} is not a relative path without '..'")
    root = folder.resolve()
    path = (folder / rel).resolve()
    if not path.is_relative_to(root):
        raise JournalError(f"{where}: artifact file {rel!r} leads outside the journal's folder (to {path})")
    if not path.is_file():
        raise JournalError(f"{where}: artifact file {rel!r} is not a file in {folder}")
    return path


def check_journal(folder: Path) -> dict[int, Path]:
    """Read the journal and check every artifact entry (``artifact_file``) before anything is sent;
    returns {index among the entries after the header: the file}. Raises ``JournalError``."""
    ops = read_journal(folder)[1:]
    return {i: artifact_file(folder, op, i + 1) for i, op in enumerate(ops) if op.get("op") == "artifact"}


def relog(folder: Path, tracker: Tracker) -> str:
    """Replay a journal into ``tracker``'s store; returns the run id that holds it now.

    Into the run it came from when that run is still in the store (the usual case: the store
    went away and came back), else into a new run of the same experiment with the same tags
    and params. Afterwards the journal is renamed ``journal.relogged.jsonl``.
    """
    entries = read_journal(folder)
    head, ops = entries[0], entries[1:]
    files = check_journal(folder)  # every file is checked before anything is sent
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
    for i, op in enumerate(ops):
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
            tracker.call(client.log_artifact, run_id, str(files[i]), op.get("dir"))
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
