"""The offline journal: what a run could not write to its tracking store, kept on local disk.

When the store stops answering for longer than ``tracking.retry_seconds``, a run does not stop:
every write from then on (params, tags, metrics with their steps and timestamps, artifacts,
the final status) is appended to ``<run folder>/offline/journal.jsonl``, artifact files are
copied beside it, and training goes on to the end of its budget. ``bench relog FOLDER``
(``bench.store.relog``) replays the journal into the run it came from (or, if that run is gone,
into a new run of the same experiment); ``bench run`` does it by itself before training when the
store is back.

Each line is one JSON object; the first one (``op: run``) says which store, experiment and run
the journal belongs to, with the run's tags and params, so that the run can be rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"
DONE = "journal.relogged.jsonl"


class Journal:
    """Append-only, line-buffered and fsynced: a kill loses at most the line being written."""

    def __init__(self, folder: Path, header: dict[str, Any]) -> None:
        self.folder = folder
        self.path = folder / JOURNAL
        (folder / "files").mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._end_torn_line()
        if not self._has_entry():  # new, or a kill tore its header line: the header comes first
            self.add("run", **header)

    def _has_entry(self) -> bool:
        """Whether the journal holds one whole entry (bench writes the header first)."""
        if not self.path.exists():
            return False
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    if isinstance(json.loads(line), dict):
                        return True
                except ValueError:
                    continue
        return False

    def _end_torn_line(self) -> None:
        """A journal that a kill left mid-line (no final newline) gets one before anything is
        appended: the next entry would otherwise run on from the fragment, and both be dropped."""
        with open(self.path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def add(self, op: str, **payload: Any) -> None:
        line = json.dumps({"op": op, "time": time.time(), **payload}, default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_file(self, src: Path, artifact_dir: str | None) -> str:
        """Copy an artifact file into the journal's folder; returns its path relative to the folder."""
        rel = Path("files") / (artifact_dir or "") / src.name
        dst = self.folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return str(rel)

    def keep_text(self, text: str, artifact_file: str) -> str:
        rel = Path("files") / artifact_file
        dst = self.folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text, encoding="utf-8")
        return str(rel)


class JournalError(ValueError):
    """A journal that bench will not replay; the message names the journal, the line and the field."""


def json_kind(value: Any) -> str:
    """How an error message names a JSON value's type."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _header_problem(head: dict[str, Any]) -> str | None:
    """What is wrong with the header entry (``op: run``), else None. ``uri`` and ``experiment`` must
    be there; the other fields, when there, must have the types the journal writes."""
    for key in ("uri", "experiment"):
        if key not in head:
            return f"the header (op 'run') has no {key!r}"
    if not isinstance(head["uri"], str) or not head["uri"].strip():
        return f"the header's 'uri' must be a non-empty string, not {json_kind(head['uri'])}"
    for key in ("experiment", "run_id", "run_name", "parent_run_id"):
        value = head.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            return f"the header's {key!r} must be a non-empty string or null, not {json_kind(value)}"
    for key in ("tags", "params"):
        value = head.get(key)
        if value is not None and not isinstance(value, dict):
            return f"the header's {key!r} must be an object, not {json_kind(value)}"
    return None


def read_entries(folder: Path) -> list[tuple[int, dict[str, Any]]]:
    """The journal's entries with their line numbers (from 1). A line that is not JSON (a torn
    write: killed mid-line) is dropped; every other line must be a JSON object, and the first one
    the header (``op: run``, with ``uri`` and ``experiment``). Raises ``JournalError``."""
    path = folder / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {JOURNAL} here (nothing to re-log, or already re-logged)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise JournalError(f"{path}: not a bench journal (not UTF-8 text at byte {e.start})") from None
    entries = []
    for n, line in enumerate(text.split("\n"), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        except RecursionError:
            raise JournalError(f"{path}: line {n}: not a journal entry (nested too deeply)") from None
        if not isinstance(entry, dict):
            raise JournalError(f"{path}: line {n}: {json_kind(entry)}, not a journal entry (a JSON object)")
        entries.append((n, entry))
    if not entries:
        raise JournalError(f"{path}: not a bench journal (no header line)")
    n, head = entries[0]
    if head.get("op") != "run":
        raise JournalError(f"{path}: line {n}: not a bench journal (the first entry is no header, op 'run')")
    problem = _header_problem(head)
    if problem:
        raise JournalError(f"{path}: line {n}: {problem}")
    return entries


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """The journal's entries (``read_entries`` without the line numbers); the first is its header,
    checked. Raises ``JournalError`` (a ``ValueError``) naming the journal and the line."""
    return [entry for _, entry in read_entries(folder)]


def pending_journal(run_folder: Path) -> Path | None:
    """The offline folder of a run when it holds a journal not yet re-logged."""
    folder = run_folder / "offline"
    return folder if (folder / JOURNAL).is_file() else None
