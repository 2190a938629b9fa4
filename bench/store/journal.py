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
        if not self.path.exists():
            self.add("run", **header)

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


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """The journal's entries; a torn last line (killed mid-write) is dropped."""
    path = folder / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {JOURNAL} here (nothing to re-log, or already re-logged)")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not entries or entries[0].get("op") != "run":
        raise ValueError(f"{path}: not a bench journal (no header line)")
    return entries


def pending_journal(run_folder: Path) -> Path | None:
    """The offline folder of a run when it holds a journal not yet re-logged."""
    folder = run_folder / "offline"
    return folder if (folder / JOURNAL).is_file() else None
