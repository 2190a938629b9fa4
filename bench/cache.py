"""The on-disk cache of expensive, reusable results, keyed by their content.

Converted Inception weights, trained domain classifiers, reference features and statistics, and
reference-row results live here, each under a key derived from what determines it (dataset
checksum, split, image count, extractor and weights hash, code version ...), never from a name
the caller picks. Folder: ``$BENCH_CACHE_DIR``, else ``~/.cache/bench``.

A suite run by Ray computes these once, in the submitting process, and shares them through the
tracking store (``publish_shared`` / ``fetch_shared``): every worker node starts with them.

Entries are written atomically (a crashed writer leaves no half file) and tensors are read back
with ``torch.load(weights_only=True)``: a cache file holds tensors and plain data, never code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from bench.files import atomic_write

log = logging.getLogger("bench")

DEFAULT_DIR = Path("~/.cache/bench")
T = TypeVar("T")


def cache_dir() -> Path:
    """The cache folder: ``$BENCH_CACHE_DIR`` when set, else ``~/.cache/bench``."""
    return Path(os.environ.get("BENCH_CACHE_DIR") or DEFAULT_DIR).expanduser()


def content_key(parts: dict[str, Any]) -> str:
    """A short, stable hash of everything that determines a cached value."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def entry_path(kind: str, parts: dict[str, Any], suffix: str = ".pt") -> Path:
    return cache_dir() / kind / f"{content_key(parts)}{suffix}"


class CacheFileError(RuntimeError):
    """A cached or shared file is not plain tensor data that bench wrote; the message names it."""


def load_tensors(path: Any) -> Any:
    """``torch.load(weights_only=True)`` of a cache file (or an open binary buffer): tensors,
    numbers, strings and containers only, so a planted pickle never runs. Anything else raises
    ``CacheFileError`` naming the file."""
    p = path if hasattr(path, "read") else Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CacheFileError(
            f"{p}: refused to load: not a plain tensor file written by bench ({first[:200]}); "
            "delete it and bench computes it again"
        ) from None


def save_tensors(obj: Any, path: Path) -> None:
    """Atomically ``torch.save`` tensors / plain containers to ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _describe(path: Path, parts: dict[str, Any]) -> None:
    """A readable note beside each entry: what its key was made of."""
    text = json.dumps(parts, indent=2, sort_keys=True, default=str)
    atomic_write(path.with_suffix(".key.json"), lambda f: f.write(text), mode="w")


_USED: set[Path] = set()  # entries this process read or wrote


def note_used(path: Path) -> Path:
    """Remember that this process used the cache entry ``path`` (see ``publish_shared``)."""
    _USED.add(Path(path))
    return path


def _holds(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError):  # torch's errors
        return False


def cached_tensors(
    kind: str, parts: dict[str, Any], compute: Callable[[], T], check: Callable[[T], bool] | None = None
) -> T:
    """Load the entry for ``parts`` or compute, store and return it (tensors and plain data only).
    ``check``: whether a loaded entry holds what ``compute`` would return (its keys, shapes,
    dtypes and finite values); one that does not (damaged, altered, or written by other code) is
    computed again, with a warning naming the file, and replaced. A computed value that fails
    ``check`` is returned but not stored (a warning says so): the next run computes it again."""
    path = note_used(entry_path(kind, parts))
    if path.exists():
        try:
            value = load_tensors(path)
            if check is None or _holds(check, value):
                return value
            log.warning("cache entry %s does not hold what its key describes; recomputing", path)
        except CacheFileError as e:  # a damaged or planted file is recomputed, never trusted
            log.warning("cache entry %s unreadable (%s); recomputing", path, e)
    value = compute()
    if _fresh_holds(check, value, path):
        save_tensors(value, path)
        _describe(path, parts)
    return value


def cached_json(
    kind: str, parts: dict[str, Any], compute: Callable[[], T], check: Callable[[T], bool] | None = None
) -> T:
    """Like ``cached_tensors`` for JSON-serialisable values (metric results): ``check`` is whether
    the parsed entry holds what ``compute`` would return (a file that does not is computed again and
    replaced, with a warning naming it)."""
    path = note_used(entry_path(kind, parts, ".json"))
    if path.exists():
        try:
            value = json.loads(path.read_text())
            if check is None or _holds(check, value):
                return value
            log.warning("cache entry %s does not hold what its key describes; recomputing", path)
        except (OSError, ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deeply
            log.warning("cache entry %s unreadable (%s); recomputing", path, e)
    text = json.dumps(compute(), sort_keys=True)
    value = json.loads(text)  # what a later run reads back, so both runs see the same value
    if _fresh_holds(check, value, path):
        atomic_write(path, lambda f: f.write(text), mode="w")
        _describe(path, parts)
    return value


def _fresh_holds(check: Callable[[Any], bool] | None, value: Any, path: Path) -> bool:
    """Whether a value just computed for ``path`` passes the entry's ``check``: one that fails (NaN
    from the computation itself, or a check that has drifted from the code) is not stored, where
    every later run would reject it with a misleading warning."""
    if check is None or _holds(check, value):
        return True
    log.warning("the value computed for cache entry %s fails its check; not stored", path)
    return False


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_MEMO[memo_key] = h.hexdigest()
    return _SHA_MEMO[memo_key]


SHARED = "cache"  # artifact folder of the suite run that holds the shared entries


def publish_shared(run: Any) -> int:
    """Log every cache entry this process used (and its key note) as artifacts ``cache/<kind>/``
    of ``run`` (a ``RunLogger``); returns how many entries."""
    root = cache_dir().resolve()
    n = 0
    for path in sorted(_USED):
        path = path.resolve()
        if not path.is_file() or not path.is_relative_to(root):
            continue
        folder = f"{SHARED}/{path.parent.relative_to(root).as_posix()}"
        run.file(path, folder)
        note = path.with_suffix(".key.json")
        if note.is_file():
            run.file(note, folder)
        n += 1
    return n


def fetch_shared(tracker: Any, run_id: str) -> int:
    """Copy the entries a suite run shares (``publish_shared``) into this machine's cache, keeping
    the ones already there; returns how many were added."""
    root = cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = tracker.download(run_id, SHARED, tmp)
        except Exception:  # the run shares nothing
            return 0
        n = 0
        for src in sorted(Path(got).rglob("*")):
            dst = root / src.relative_to(got)
            if src.is_file() and not dst.exists():
                atomic_write(dst, lambda f, src=src: f.write(src.read_bytes()))
                n += not dst.name.endswith(".key.json")
        return n
