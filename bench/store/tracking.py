"""Everything that touches MLflow, behind a small interface.

Layout in the store: experiment = suite name; one parent run per ``bench run`` (tag
``bench.kind=suite``); one child run per (model label, seed) (tag ``bench.kind=run``) holding
params (the resolved, flattened run config), per-step losses, metrics with their provenance
(tags ``provenance.<metric>``), and artifacts (config, grids, state_dict, environment).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.files import locked

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from bench.metrics import Result

DEFAULT_URI = "sqlite:///mlflow.db"
# every suite's experiment: the MLflow UI (3.x) opens such an experiment on its training runs, not
# on its GenAI views (traces, token usage), which bench never fills
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows on a run's and an experiment's page
MODEL_ARTIFACT = "model"  # runs:/<run_id>/model loads a run's final model (mlflow.pytorch.load_model)
# a finished run's tag per metric its final evaluation could not compute: the reason, in one line
METRIC_FAILED_TAG = "metric_failed."


def failed_metrics(tags: dict[str, str]) -> dict[str, str]:
    """{metric: reason} of the ``metric_failed.<metric>`` tags of a run."""
    return {k.removeprefix(METRIC_FAILED_TAG): v for k, v in tags.items() if k.startswith(METRIC_FAILED_TAG)}


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; the message names the URI."""


_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def redact_uri(text: str) -> str:
    """``text`` with the userinfo of every URI in it (``user:token@``) replaced by ``***@``.

    Everything bench prints, logs or writes about a tracking store goes through this: reports,
    error lines, run folders and journals never hold credentials (MLflow also reads them from
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN``)."""
    return _USERINFO.sub(r"\1***@", text)


def has_redacted_userinfo(uri: str) -> bool:
    """Whether ``uri`` is a redacted one (its credentials were left out when it was written)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://\*\*\*@", uri))


def resolve_uri(cli_uri: str | None, suite_uri: str | None = None) -> str:
    """--tracking-uri, then the suite's tracking.uri, then $MLFLOW_TRACKING_URI, then ./mlflow.db."""
    return cli_uri or suite_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_root(uri: str) -> str | None:
    """For a sqlite store, keep artifacts in ``mlartifacts/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class TrackingLost(TrackingError):
    """The store stopped answering and kept failing for ``retry_seconds``."""


# MLflow's HTTP client retries a refused connection for minutes by default; bench retries at its
# own level (``Tracker.call``, bounded by ``tracking.retry_seconds``), so it keeps MLflow's own
# retries short unless the user set them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


_READ_ONLY = "attempt to write a readonly database"


def is_transient(e: BaseException) -> bool:
    """Failures worth retrying: the store is busy, restarting, or out of reach for a while."""
    from mlflow.exceptions import MlflowException

    if _READ_ONLY in str(e):  # sqlite: a read-only file, folder or mount stays read-only
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(e, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import sqlalchemy.exc

        if isinstance(e, sqlalchemy.exc.OperationalError):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, MlflowException):
        # (not INTERNAL_ERROR: MLflow's default code, carried by its bugs and ours alike)
        if e.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"):
            return True
        msg = str(e)
        return msg.startswith("API request to") or "database is locked" in msg
    return False


def short_reason(e: BaseException) -> str:
    """One line for a store failure: the OS reason when there is one ("Connection refused")."""
    import re

    text = str(e).strip()
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1).strip()
    if "timed out" in text or "timeout" in text.lower():
        return "timed out"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:200]


class _Env:
    """Temporarily set environment variables (MLflow reads its HTTP settings at each request)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tracker:
    """A connection to one MLflow tracking store. Every call goes through ``call``: transient
    failures (sqlite busy, server restarting or unreachable) are retried with exponential backoff
    for up to ``retry_seconds``, then raise ``TrackingLost``."""

    def __init__(self, uri: str, retry_seconds: float = 120.0) -> None:
        import logging

        import mlflow  # noqa: F401  (its import configures its loggers: quiet them after it)

        # alembic announces every schema migration of a new sqlite store, MLflow every start and
        # stop of its system-metrics thread (and every sqlite retry, with a traceback), urllib3
        # every HTTP retry: keep the console for bench, which reports what matters itself
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for name in (
            "mlflow.store.db.utils",
            "mlflow.utils.async_logging.async_logging_queue",  # failed batches are re-sent by bench
            "mlflow.system_metrics",
            "urllib3.connectionpool",
        ):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # and a progress bar for every artifact a report downloads (unless the user asked for them)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        self.retry_seconds = retry_seconds
        self._client: MlflowClient | None = None
        if uri.startswith(("http://", "https://")):
            for k, v in _HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> MlflowClient:
        from mlflow import MlflowClient

        db = sqlite_path(self.uri)
        if db is None or (db.is_file() and not os.access(db, os.W_OK)):
            # not sqlite, or an existing store this process cannot write (a read-only file or mount):
            # it has no schema to create, and nothing is written beside it
            return MlflowClient(tracking_uri=self.uri)
        # MLflow creates and migrates the schema of a new sqlite store when it first opens it;
        # two processes doing that at once corrupt it, so opening is serialised by a lock file
        from contextlib import ExitStack

        with ExitStack() as stack:
            try:
                stack.enter_context(locked(db.parent / ".bench" / f"{db.name}.open.lock"))
            except OSError:
                if not db.is_file():
                    raise
                # an existing store in a folder this process cannot write (an archive, a read-only
                # mount): still read; writing is judged by check_writable and the store itself
            return MlflowClient(tracking_uri=self.uri)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried with backoff while the store fails transiently."""
        import logging

        log = logging.getLogger("bench")
        deadline = time.monotonic() + self.retry_seconds
        delay, attempts = 0.25, 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                attempts += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TrackingLost(
                        redact_uri(
                            f"the tracking store {self.uri} did not answer for {self.retry_seconds:g} s "
                            f"({attempts} attempt{'s' if attempts > 1 else ''}): {short_reason(e)}"
                        )
                    ) from e
                if attempts == 1:
                    log.warning(
                        "tracking store %s: %s; retrying for up to %g s",
                        redact_uri(self.uri),
                        redact_uri(short_reason(e)),
                        self.retry_seconds,
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 2, 30.0)
                continue
            if attempts:
                log.warning(
                    "tracking store %s answers again (after %d retries)", redact_uri(self.uri), attempts
                )
            return result

    def check(self) -> None:
        """Fail fast (before any training) when the store is unreachable: one quick attempt."""
        try:
            with _Env(_CHECK_ENV):
                try:
                    self.client.search_experiments(max_results=1)
                except Exception as e:
                    if sqlite_path(self.uri) is None or "database is locked" not in str(e):
                        raise
                    # a sqlite store another writer holds is there and busy, not unreachable: it is
                    # waited for like every busy store (retry_seconds), then refused
                    self.call(lambda: self.client.search_experiments(max_results=1))  # opening included
        except Exception as e:  # MLflow raises many types for "cannot reach"
            raise TrackingError(
                redact_uri(f"cannot reach the tracking store {self.uri}: {short_reason(e)}")
            ) from None

    def check_writable(self) -> None:
        """Fail fast when a sqlite store cannot be written (a read-only file, folder or mount):
        a write inside a transaction that is rolled back. Other stores are judged at the first write."""
        import sqlite3

        db = sqlite_path(self.uri)
        if db is None or not db.is_file():
            return
        try:
            con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("CREATE TABLE bench_write_check (x)")
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):  # another writer holds it: writable
                return
            raise TrackingError(
                f"the tracking store {redact_uri(self.uri)} is read-only here ({e}): bench cannot log to it"
            ) from None

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        from mlflow.exceptions import MlflowException

        exp = self.call(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {name!r} is deleted in {redact_uri(self.uri)}: restore it "
                    f"(mlflow experiments restore) or remove it for good (mlflow gc)"
                )
            if create:  # an experiment made before bench tagged them gets its tags on its next run
                for k, v in EXPERIMENT_TAGS.items():
                    if exp.tags.get(k) != v:
                        self.call(self.client.set_experiment_tag, exp.experiment_id, k, v)
            return exp.experiment_id
        if not create:
            return None
        root = _artifact_root(self.uri)
        try:
            return self.call(
                self.client.create_experiment,
                name,
                artifact_location=f"{root}/{name}" if root else None,
                tags=EXPERIMENT_TAGS,
            )
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # another process created it between our look-up and our create
            return self.call(self.client.get_experiment_by_name, name).experiment_id

    def start_suite(self, suite_name: str, suite_yaml: str, n_runs: int) -> RunLogger:
        exp = self.experiment_id(suite_name)
        run = self.call(
            self.client.create_run,
            exp,
            run_name=f"{suite_name} ({time.strftime('%Y-%m-%d %H:%M')})",
            tags={
                "bench.kind": "suite",
                "bench.suite": suite_name,
                "bench.n_runs": str(n_runs),
                **process_tags(),
            },
        )
        logger = RunLogger(self, run.info.run_id)
        logger.text("suite.yaml", suite_yaml)
        logger.text("environment.json", json.dumps(environment(), indent=2))
        return logger

    def start_run(
        self,
        parent: RunLogger,
        spec_tags: dict[str, str],
        run_name: str,
        offline_dir: Path | None = None,
    ) -> RunLogger:
        """A new child run of ``parent``. With ``offline_dir``, a store lost mid-run makes the
        logger keep writing to an offline journal there instead of raising."""
        exp = self.call(self.client.get_run, parent.run_id).info.experiment_id
        tags = {"bench.kind": "run", "mlflow.parentRunId": parent.run_id, **spec_tags, **process_tags()}
        run = self.call(self.client.create_run, exp, run_name=run_name, tags=tags)
        identity = {"experiment_id": exp, "run_name": run_name, "tags": tags, "parent_run_id": parent.run_id}
        return RunLogger(
            self, run.info.run_id, system_metrics=True, identity=identity, offline_dir=offline_dir
        )

    def resume_run(self, run_id: str, offline_dir: Path | None = None) -> RunLogger:
        """Reopen an interrupted run: status back to RUNNING, and every metric step already in the
        store is remembered so that the resumed run neither loses nor repeats a logged value."""
        run = self.call(self.client.get_run, run_id)
        self.call(self.client.update_run, run_id, status="RUNNING")
        for key in run.data.tags:  # why it stopped, or what it missed, last time: no longer true
            if key == "failure_reason" or key.startswith(METRIC_FAILED_TAG):
                self.call(self.client.delete_tag, run_id, key)
        logged = {}
        for key in run.data.metrics:
            history = self.call(self.client.get_metric_history, run_id, key)
            if history:
                logged[key] = max(m.step for m in history)
        identity = {
            "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
            | {"mlflow.parentRunId": run.data.tags.get("mlflow.parentRunId", "")},
            "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
        }
        logger = RunLogger(
            self, run_id, system_metrics=True, identity=identity, offline_dir=offline_dir, logged_steps=logged
        )
        logger._params = dict(run.data.params)
        logger.tags(process_tags())
        return logger

    def start_reference(self, suite_name: str, tags: dict[str, str]) -> RunLogger:
        """The real-data reference row of a suite's experiment (tag ``bench.kind=reference``)."""
        exp = self.experiment_id(suite_name)
        run = self.client.create_run(
            exp,
            run_name="reference",
            tags={"bench.kind": "reference", "bench.suite": suite_name, **tags, **process_tags()},
        )
        return RunLogger(self, run.info.run_id)

    # ---- reading (reports, resume)
    def runs(self, experiment: str, kind: str = "run") -> list[Any]:
        exp = self.experiment_id(experiment, create=False)
        if exp is None:
            return []
        return self.call(
            self.client.search_runs, [exp], filter_string=f"tags.`bench.kind` = '{kind}'", max_results=50000
        )

    def latest_suite_run(self, experiment: str) -> Any | None:
        """The most recent parent run (``bench.kind=suite``) of a suite, or None."""
        parents = sorted(self.runs(experiment, kind="suite"), key=lambda r: r.info.start_time)
        return parents[-1] if parents else None

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged (step, value) of one metric of one run, in step order."""
        return sorted((m.step, m.value) for m in self.call(self.client.get_metric_history, run_id, key))

    def artifact_bytes(self, run_id: str, path: str) -> bytes | None:
        """The content of one artifact, or None when the run has no such file."""
        with tempfile.TemporaryDirectory() as d, self.as_default():
            try:
                local = self.client.download_artifacts(run_id, path, d)
            except Exception:  # MLflow raises several types for a missing artifact
                return None
            p = Path(local)
            return p.read_bytes() if p.is_file() else None

    def log_files(self, run_id: str, paths: list[Path], artifact_path: str) -> None:
        """Log local files under ``artifact_path`` of a run (finished runs included)."""
        for p in paths:
            self.call(self.client.log_artifact, run_id, str(p), artifact_path)

    def describe(self, run_id: str, text: str, experiment_owned_by: str | None = None) -> None:
        """Set ``text`` as the run's description in the MLflow UI, and as its experiment's where
        the experiment has none or one that starts with ``experiment_owned_by`` (bench wrote it):
        a description a person wrote is kept."""
        self.call(self.client.set_tag, run_id, NOTE_TAG, text)
        if experiment_owned_by is None:
            return
        exp_id = self.call(self.client.get_run, run_id).info.experiment_id
        current = self.call(self.client.get_experiment, exp_id).tags.get(NOTE_TAG)
        if not current or current.startswith(experiment_owned_by):
            self.call(self.client.set_experiment_tag, exp_id, NOTE_TAG, text)

    def runs_with_hash(self, experiment: str, config_hash: str) -> list[Any]:
        """Child runs of one config hash, newest first."""
        exp = self.experiment_id(experiment, create=False)
        if exp is None:
            return []
        return self.call(
            self.client.search_runs,
            [exp],
            filter_string=f"tags.`bench.kind` = 'run' and tags.`bench.config_hash` = '{config_hash}'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )

    def get_run(self, run_id: str) -> Any | None:
        """The run, or None when it is not in the store (or deleted)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.call(self.client.get_run, run_id)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def close_stale(self, run: Any, reason: str, status: str = "KILLED") -> None:
        """Close a run left RUNNING by a process that ended (KILLED by default), with its reason."""
        from mlflow.entities import RunTag

        self.call(self.client.log_batch, run.info.run_id, tags=[RunTag("failure_reason", reason)])
        self.call(self.client.set_terminated, run.info.run_id, status)

    def run(self, run_id: str) -> Any:
        """One run by id; raises ``TrackingError`` when the store has no such run."""
        try:
            return self.client.get_run(run_id)
        except Exception as e:  # MlflowException for unknown ids, many types for bad ones
            raise TrackingError(f"no run {run_id!r} in {redact_uri(self.uri)}") from e

    def log_batch(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        ts: int | None = None,
    ) -> None:
        """Params, tags and metrics of one run, in as many batches as MLflow's limits need
        (each retried like every call)."""
        for batch in param_batches(params or {}):
            self.call(self.client.log_batch, run_id, params=batch)
        if tags:
            from mlflow.entities import RunTag

            self.call(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if metrics:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000) if ts is None else ts
            items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
            for i in range(0, len(items), MAX_BATCH):
                self.call(self.client.log_batch, run_id, metrics=items[i : i + MAX_BATCH])

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        """Copy one artifact of a run into the local folder ``dst``; returns its local path."""
        with self.as_default():
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def as_default(self) -> _Env:
        """This store as MLflow's default while in the block. A run's ``model/`` folder is also its
        logged model's name, and MLflow looks logged models up in its default store (not the
        client's) when it lists or downloads run artifacts: without this it would open (and
        create) ``./mlflow.db``."""
        return _Env({"MLFLOW_TRACKING_URI": self.uri})


def dataset_input(name: str, digest: str, source: str, profile: dict[str, Any], context: str = "train"):
    """An MLflow dataset input: what the UI's Dataset column shows and its dataset filter selects.
    ``profile`` (split sizes, image shape) is stored as JSON with it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps(profile, sort_keys=True),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    m = re.match(r"^sqlite(\+\w+)?:///(.+)$", uri)
    return Path(m.group(2)).expanduser().resolve() if m else None


def param_batches(params: dict[str, Any]) -> list[list[Any]]:
    """MLflow params as batches of at most 100 (its limit per call), values cut to 6,000 chars."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    return [items[i : i + 100] for i in range(0, len(items), 100)]


def absolute_uri(uri: str) -> str:
    """A sqlite URI with an absolute path (others unchanged)."""
    db = sqlite_path(uri)
    return f"sqlite:///{db}" if db else uri


def process_tags() -> dict[str, str]:
    """Which process writes a run: tells a run left RUNNING by a dead process from a live one."""
    return {"bench.host": platform.node(), "bench.pid": str(os.getpid())}


def process_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by ``process_tags`` still runs (unknown hosts count as alive)."""
    if tags.get("bench.host") != platform.node():
        return True
    try:
        pid = int(tags.get("bench.pid", ""))
        os.kill(pid, 0)
    except (ValueError, OverflowError, ProcessLookupError):  # no pid, or none a process can have
        return False
    except PermissionError:
        return True
    return pid > 0


SEND_SECONDS = 1.0  # loss intervals are sent to the store at most this often (one log_batch)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


def _timed(method: Any) -> Any:
    """Charge the wall time of a write to ``RunLogger.seconds`` (outermost call only)."""
    import functools

    @functools.wraps(method)
    def wrapper(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
        if self._depth:
            return method(self, *args, **kwargs)
        self._depth += 1
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self._depth -= 1

    return wrapper


class RunLogger:
    """Writes to one MLflow run. Losses are sent by a background thread, in batches.

    Every write goes through ``Tracker.call`` (retries with backoff). If the store stays down
    past the retry window and the logger has an ``offline_dir``, it goes offline: that write
    and every later one are kept in a journal there (``bench.store.journal``) and nothing raises.
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        system_metrics: bool = False,
        identity: dict[str, Any] | None = None,
        offline_dir: Path | None = None,
        logged_steps: dict[str, int] | None = None,
    ) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.identity = identity or {}
        self.offline_dir = offline_dir
        self.journal = None  # a bench.store.journal.Journal once offline
        self.lost_reason = ""
        self._logged = logged_steps or {}  # metric key -> last step already in the store
        self._params: dict[str, Any] = {}
        # loss intervals not handed to the sender yet: (step, timestamp, values)
        self._buffer: list[tuple[int, int, dict[str, float]]] = []
        self._buffered = 0  # values in the buffer
        self._last_send = time.monotonic()
        self._pending_ops: list[tuple[Any, list]] = []  # (future of a sent batch, its intervals)
        self._sender: Any = None  # the thread that sends loss batches while training goes on
        self._monitor = None
        self.seconds = 0.0  # wall time spent in this logger's writes (the tracking cost of the run)
        self._depth = 0
        if system_metrics:
            self._monitor = _start_system_metrics(run_id, tracker.uri)

    @property
    def offline(self) -> bool:
        return self.journal is not None

    # ---- the one write path
    def _write(self, op: str, payload: dict[str, Any], fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.journal is None:
            try:
                self.tracker.call(fn, *args, **kwargs)
                return
            except TrackingLost as e:
                if self.offline_dir is None:
                    raise
                self._go_offline(str(e))
        self.journal.add(op, **payload)

    def _go_offline(self, reason: str) -> None:
        import logging

        from bench.store.journal import Journal

        self.lost_reason = reason
        ident = self.identity
        exp_name = None
        try:
            exp_name = self.client.get_experiment(ident.get("experiment_id")).name
        except Exception:  # the store is down: the suite name tag says the same
            exp_name = (ident.get("tags") or {}).get("bench.suite")
        self.journal = Journal(
            self.offline_dir,
            {
                # `bench relog` may run from another folder; credentials are never written to disk
                "uri": redact_uri(absolute_uri(self.tracker.uri)),
                "run_id": self.run_id,
                "experiment": exp_name,
                "run_name": ident.get("run_name"),
                "tags": ident.get("tags", {}),
                "params": self._params,
                "parent_run_id": ident.get("parent_run_id"),
            },
        )
        logging.getLogger("bench").warning(
            "%s; the run goes on offline and keeps what it logs in %s", reason, self.offline_dir
        )
        if self._monitor is not None:
            with _Env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}):
                try:
                    self._monitor.finish()
                except Exception:
                    pass
            self._monitor = None
        pending, self._pending_ops = self._pending_ops, []
        unsent, self._buffer, self._buffered = self._buffer, [], 0
        for batch in [b for _, b in pending] + [unsent]:  # loss intervals not confirmed by the store
            for step, ts, values in batch:
                self.journal.add("metrics", step=step, timestamp=ts, values=values)

    def _new_steps(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """Drop values a resumed run already has in the store at this step (no duplicates)."""
        if not self._logged:
            return values
        return {k: v for k, v in values.items() if step > self._logged.get(k, -1)}

    # ---- writes
    @_timed
    def params(self, params: dict[str, Any]) -> None:
        self._params.update(params)
        for chunk in param_batches(params):
            self._write(
                "params",
                {"params": {p.key: p.value for p in chunk}},
                self.client.log_batch,
                self.run_id,
                params=chunk,
            )

    @_timed
    def tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = {k: str(v) for k, v in tags.items()}
        self._write(
            "tags",
            {"tags": tags},
            self.client.log_batch,
            self.run_id,
            tags=[RunTag(k, v) for k, v in tags.items()],
        )

    @_timed
    def losses(self, step: int, values: dict[str, float]) -> None:
        """Per-step training losses, logged without waiting for the store: held in a buffer and
        sent by a background thread in one batch at most every ``SEND_SECONDS``."""
        values = self._new_steps(step, {f"train/{k}": v for k, v in values.items()})
        if not values:
            return
        now = int(time.time() * 1000)
        if self.journal is not None:
            self.journal.add("metrics", step=step, timestamp=now, values=values)
            return
        if self._buffered + len(values) > MAX_BATCH:
            self._send()
        self._buffer.append((step, now, values))
        self._buffered += len(values)
        if time.monotonic() - self._last_send >= SEND_SECONDS:
            self._send()

    def _send(self) -> None:
        """Hand the buffered loss intervals to the sender thread, as one ``log_batch``."""
        from mlflow.entities import Metric

        if not self._buffer:
            return
        batch, self._buffer, self._buffered = self._buffer, [], 0
        self._last_send = time.monotonic()
        metrics = [Metric(k, v, ts, step) for step, ts, values in batch for k, v in values.items()]
        if self._sender is None:
            # bench's own sender thread, not MLflow's asynchronous logging: ending a run that used
            # MLflow's queue waits for its thread's one-second poll (0.6 s per run, measured)
            from concurrent.futures import ThreadPoolExecutor

            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-losses")
        self._pending_ops.append(
            (self._sender.submit(self.client.log_batch, self.run_id, metrics=metrics), batch)
        )

    def _write_metrics(self, step: int, ts: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self._write(
            "metrics",
            {"step": step, "timestamp": ts, "values": values},
            self.client.log_batch,
            self.run_id,
            metrics=[Metric(k, float(v), ts, step) for k, v in values.items()],
        )

    @_timed
    def metrics(self, step: int, values: dict[str, float]) -> None:
        values = self._new_steps(step, {k: float(v) for k, v in values.items()})
        if values:
            self._write_metrics(step, int(time.time() * 1000), values)

    @_timed
    def results(self, step: int, results: dict[str, Result]) -> None:
        """Metric values at ``step`` with their provenance (as tags ``provenance.<metric>``)."""
        values: dict[str, float] = {}
        tags: dict[str, str] = {}
        for name, r in results.items():
            values[name] = r.value
            values.update(r.extra)
            tags[f"provenance.{name}"] = json.dumps(r.provenance, sort_keys=True, default=str)
        if values:
            self.metrics(step, values)
            self.tags(tags)

    @_timed
    def text(self, artifact_file: str, text: str) -> None:
        if self.journal is None:
            try:
                self.tracker.call(self.client.log_text, self.run_id, text, artifact_file)
                return
            except TrackingLost as e:
                if self.offline_dir is None:
                    raise
                self._go_offline(str(e))
        parent = str(Path(artifact_file).parent)
        rel = self.journal.keep_text(text, artifact_file)
        self.journal.add("artifact", file=rel, dir=None if parent == "." else parent)

    @_timed
    def file(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        if self.journal is None:
            try:
                self.tracker.call(self.client.log_artifact, self.run_id, str(local_path), artifact_dir)
                return
            except TrackingLost as e:
                if self.offline_dir is None:
                    raise
                self._go_offline(str(e))
        rel = self.journal.keep_file(Path(local_path), artifact_dir)
        self.journal.add("artifact", file=rel, dir=artifact_dir)

    @_timed
    def image(self, artifact_file: str, image: Any, key: str | None = None, step: int | None = None) -> None:
        """A (H, W, 3) uint8 array; with ``key`` and ``step`` it becomes a step-indexed image in the UI."""
        if self.journal is None:
            try:
                if key is not None:
                    self.tracker.call(self.client.log_image, self.run_id, image, key=key, step=step)
                else:
                    self.tracker.call(self.client.log_image, self.run_id, image, artifact_file=artifact_file)
                return
            except TrackingLost as e:
                if self.offline_dir is None:
                    raise
                self._go_offline(str(e))
        from PIL import Image

        name = artifact_file if key is None else f"images/{key}_step{step}.png"
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(name).name
            Image.fromarray(image).save(path)
            parent = str(Path(name).parent)
            self.file(path, None if parent == "." else parent)

    @_timed
    def dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """Record the run's dataset as an MLflow input (name, content digest, split sizes)."""
        payload = {"name": name, "digest": digest, "source": source, "profile": profile}
        self._write(
            "inputs", payload, self.client.log_inputs, self.run_id, datasets=[dataset_input(**payload)]
        )

    @_timed
    def model(self, model: Any, step: int) -> str | None:
        """Log ``model`` with ``mlflow.pytorch.log_model`` as this run's model ``MODEL_ARTIFACT``,
        so that ``mlflow.pytorch.load_model("runs:/<run_id>/model")`` returns it. Returns the
        logged model's id; None when the run is offline (its state_dict is kept in the journal)
        or when MLflow could not log it (a warning says why: the run's results stand)."""
        import logging
        from importlib import metadata

        if self.journal is not None:
            return None
        try:
            import mlflow.pytorch
            from mlflow.entities import LoggedModelOutput

            exp = self.tracker.call(self.client.get_run, self.run_id).info.experiment_id
            logged = self.tracker.call(
                self.client.create_logged_model, exp, name=MODEL_ARTIFACT, source_run_id=self.run_id
            )
            # MLflow warns on every pickled model; bench never loads it back (it reads state_dict.pt
            # with weights_only), so the warning is said once in docs/tracking-and-cluster.md instead
            quiet = logging.getLogger("mlflow.pytorch")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                with self.tracker.as_default():  # log_model writes through MLflow's fluent API
                    mlflow.pytorch.log_model(
                        model,
                        name=MODEL_ARTIFACT,
                        model_id=logged.model_id,
                        serialization_format="pickle",  # the models' forward is not one traceable call
                        pip_requirements=[f"torch=={metadata.version('torch')}"],  # no slow inference
                    )
            finally:
                quiet.setLevel(level)
            self.tracker.call(
                self.client.log_outputs, self.run_id, [LoggedModelOutput(logged.model_id, step)]
            )
            return logged.model_id
        except Exception as e:  # the model is a convenience beside state_dict.pt: never fail a run for it
            logging.getLogger("bench").warning(
                "run %s: the model was not logged to MLflow: %s", self.run_id, e
            )
            return None

    @_timed
    def torch_state(self, artifact_file: str, state: dict) -> None:
        import torch

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            torch.save(state, path)
            self.file(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    @_timed
    def flush(self) -> None:
        """Wait until every loss interval logged so far is in the store (a batch the sender
        failed to write is sent again, with retries)."""
        self._send()
        pending, self._pending_ops = self._pending_ops, []
        for op, batch in pending:
            try:
                op.result()
                continue
            except Exception:
                pass
            for step, ts, values in batch:
                if self.journal is not None:
                    self.journal.add("metrics", step=step, timestamp=ts, values=values)
                else:
                    self._write_metrics(step, ts, values)

    @_timed
    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # system metrics are a courtesy: never fail a run for them
                pass
            self._monitor = None
        self._write("finish", {"status": status}, self.client.set_terminated, self.run_id, status)


def _start_system_metrics(run_id: str, uri: str):
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=5, samples_before_logging=1, tracking_uri=uri
        )
        monitor.start()
        return monitor
    except Exception:  # psutil missing or an unsupported platform: run without them
        return None


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    import mlflow
    import torch
    import torchvision

    from bench.version import __version__

    env = {
        "bench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mlflow": mlflow.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }
    return env


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
