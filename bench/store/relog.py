"""Replay an offline journal (``bench.store.journal``) into a tracking store, through ``Tracker``."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from bench.store.journal import DONE, JOURNAL, JournalError, json_kind, read_entries
from bench.store.tracking import Tracker, dataset_input

FINISH_STATUSES = ("FINISHED", "FAILED", "KILLED")


def artifact_file(folder: Path, op: dict[str, Any], entry: int, lineno: int | None = None) -> Path:
    """The file of an ``artifact`` entry, which must lie inside the journal's own folder: a
    relative path without ``..`` whose real path (symlinks resolved) is a file under the folder.
    Its artifact folder (``dir``) must be relative and without ``..`` too."""
    where = f"{folder / JOURNAL}: entry {entry}"
    at = "" if lineno is None else f" (line {lineno})"
    rel, dst = op.get("file"), op.get("dir")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise JournalError(f"{where}: artifact file {rel!r} is not a path inside the journal's folder{at}")
    if dst is not None and (
        not isinstance(dst, str) or PurePosixPath(dst).is_absolute() or ".." in PurePosixPath(dst).parts
    ):
        raise JournalError(f"{where}: artifact folder {dst!r} is not a relative path without '..'{at}")
    root = folder.resolve()
    path = (folder / rel).resolve()
    if not path.is_relative_to(root):
        raise JournalError(
            f"{where}: artifact file {rel!r} leads outside the journal's folder (to {path}){at}"
        )
    if not path.is_file():
        raise JournalError(f"{where}: artifact file {rel!r} is not a file in {folder}{at}")
    return path


INT64 = 2**63


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A number the store can hold as a metric value (a float: NaN and infinities included)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:  # an integer beyond float's range
        return False
    return True


def _name_problem(kind: str, name: str) -> str | None:
    """MLflow's own rule for a metric, param or tag name (characters, length), as its message."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    check = {
        "metrics": validation._validate_metric_name,
        "params": validation._validate_param_name,
        "tags": validation._validate_tag_name,
    }[kind]
    try:
        check(name)
    except MlflowException as e:
        return f"{kind} name {name!r}: {str(e).splitlines()[0]}"
    return None


def entry_problem(op: dict[str, Any]) -> str | None:
    """What is wrong with one entry after the header (its ``op`` and the fields replaying it
    reads, with their types), else None. ``artifact`` paths are checked by ``artifact_file``."""
    kind = op.get("op")
    if kind in ("params", "tags"):
        if not isinstance(op.get(kind), dict):
            return f"{kind!r} must be an object, not {json_kind(op.get(kind))}"
        if "" in op[kind]:
            return f"{kind!r} has an empty name"
        return next((p for name in op[kind] if (p := _name_problem(kind, name))), None)
    elif kind == "metrics":
        values = op.get("values")
        if not isinstance(values, dict):
            return f"'values' must be an object of metric values, not {json_kind(values)}"
        bad = next((k for k, v in values.items() if not k or not _is_number(v)), None)
        if bad is not None:
            what = json_kind(values[bad])
            what = "a number beyond a float's range" if what == "a number" else what
            return f"'values' must map metric names to numbers: {bad!r} is {what}"
        for key in ("step", "timestamp"):
            if not _is_int(op.get(key)):
                return f"{key!r} must be an integer, not {json_kind(op.get(key))} ({op.get(key)!r})"
            if not -INT64 <= op[key] < INT64:  # the store's column is 64 bits
                return f"{key!r} is beyond a 64-bit integer ({op[key]})"
        return next((p for name in values if (p := _name_problem("metrics", name))), None)
    elif kind == "inputs":
        for key in ("name", "digest", "source"):
            if not isinstance(op.get(key), str):
                return f"{key!r} must be a string, not {json_kind(op.get(key))}"
        if not isinstance(op.get("profile"), dict):
            return f"'profile' must be an object, not {json_kind(op.get('profile'))}"
    elif kind == "finish":
        if op.get("status") not in FINISH_STATUSES:
            return f"'status' must be one of {', '.join(FINISH_STATUSES)}, not {op.get('status')!r}"
    elif kind != "artifact":
        return f"op {kind!r} is not one a journal holds (params, tags, metrics, inputs, artifact, finish)"
    return None


def check_journal(folder: Path) -> dict[int, Path]:
    """Read the journal and check every entry (its fields and their types, and the file of each
    artifact entry: ``artifact_file``) before anything is sent; returns {index among the entries
    after the header: the artifact's file}. Raises ``JournalError`` naming the journal and the line."""
    return _checked(folder)[2]


def _checked(folder: Path) -> tuple[tuple[int, dict[str, Any]], list[dict[str, Any]], dict[int, Path]]:
    """The journal read once and checked: (header line number, header), the entries after it, and
    the artifact files (``check_journal``)."""
    entries = read_entries(folder)
    head_line, head = entries[0]
    for kind in ("tags", "params"):  # the header's names, as an entry's: before any run is created
        problem = entry_problem({"op": kind, kind: head.get(kind) or {}})
        if problem:
            raise JournalError(f"{folder / JOURNAL}: line {head_line}: the header's {problem}")
    files = {}
    for i, (lineno, op) in enumerate(entries[1:]):
        problem = entry_problem(op)
        if problem:
            raise JournalError(f"{folder / JOURNAL}: entry {i + 1}: {problem} (line {lineno})")
        if op["op"] == "artifact":
            files[i] = artifact_file(folder, op, i + 1, lineno)
    return entries[0], [op for _, op in entries[1:]], files


def relog(folder: Path, tracker: Tracker) -> str:
    """Replay a journal into ``tracker``'s store; returns the run id that holds it now.

    Into the run it came from when that run is still in the store (the usual case: the store
    went away and came back), else into a new run of the same experiment with the same tags
    and params. Afterwards the journal is renamed ``journal.relogged.jsonl``.
    """
    (head_line, head), ops, files = _checked(folder)  # every entry is checked before anything is sent
    run_id = head.get("run_id")
    run = tracker.get_run(run_id) if run_id else None
    client = tracker.client
    if run is None:
        if not head["experiment"]:  # checked before anything is created
            raise JournalError(
                f"{folder / JOURNAL}: line {head_line}: the header's run ({run_id}) is not in the store "
                "and its 'experiment' is null: there is no experiment to re-create the run in"
            )
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
            tracker.log_batch(run_id, metrics=op["values"], step=op["step"], ts=op["timestamp"])
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
