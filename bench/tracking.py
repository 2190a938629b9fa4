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
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from bench.metrics import Result

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; the message names the URI."""


def resolve_uri(cli_uri: str | None, suite_uri: str | None = None) -> str:
    """--tracking-uri, then the suite's tracking.uri, then $MLFLOW_TRACKING_URI, then ./mlflow.db."""
    return cli_uri or suite_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_root(uri: str) -> str | None:
    """For a sqlite store, keep artifacts in ``mlartifacts/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class Tracker:
    """A connection to one MLflow tracking store."""

    def __init__(self, uri: str) -> None:
        import logging

        from mlflow import MlflowClient

        # alembic announces every schema migration of a new sqlite store, and MLflow every
        # start and stop of its system-metrics thread, at INFO level: keep the console for bench
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # and a progress bar for every artifact a report downloads (unless the user asked for them)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        self.client: MlflowClient = MlflowClient(tracking_uri=uri)

    def check(self) -> None:
        """Fail fast (before any training) when the store is unreachable."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:  # MLflow raises many types for "cannot reach"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(f"cannot reach the tracking store {self.uri}: {first}") from None

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        root = _artifact_root(self.uri)
        return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)

    def start_suite(self, suite_name: str, suite_yaml: str, n_runs: int) -> RunLogger:
        exp = self.experiment_id(suite_name)
        run = self.client.create_run(
            exp,
            run_name=f"{suite_name} ({time.strftime('%Y-%m-%d %H:%M')})",
            tags={"bench.kind": "suite", "bench.suite": suite_name, "bench.n_runs": str(n_runs)},
        )
        logger = RunLogger(self, run.info.run_id)
        logger.text("suite.yaml", suite_yaml)
        logger.text("environment.json", json.dumps(environment(), indent=2))
        return logger

    def start_run(self, parent: RunLogger, spec_tags: dict[str, str], run_name: str) -> RunLogger:
        exp = self.client.get_run(parent.run_id).info.experiment_id
        run = self.client.create_run(
            exp,
            run_name=run_name,
            tags={"bench.kind": "run", "mlflow.parentRunId": parent.run_id, **spec_tags},
        )
        return RunLogger(self, run.info.run_id, system_metrics=True)

    def start_reference(self, suite_name: str, tags: dict[str, str]) -> RunLogger:
        """The real-data reference row of a suite's experiment (tag ``bench.kind=reference``)."""
        exp = self.experiment_id(suite_name)
        run = self.client.create_run(
            exp,
            run_name="reference",
            tags={"bench.kind": "reference", "bench.suite": suite_name, **tags},
        )
        return RunLogger(self, run.info.run_id)

    # ---- reading (reports, resume)
    def runs(self, experiment: str, kind: str = "run") -> list[Any]:
        exp = self.experiment_id(experiment, create=False)
        if exp is None:
            return []
        return self.client.search_runs(
            [exp], filter_string=f"tags.`bench.kind` = '{kind}'", max_results=50000
        )

    def run(self, run_id: str) -> Any:
        """One run by id; raises ``TrackingError`` when the store has no such run."""
        try:
            return self.client.get_run(run_id)
        except Exception as e:  # MlflowException for unknown ids, many types for bad ones
            raise TrackingError(f"no run {run_id!r} in {self.uri}") from e

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        """Copy one artifact of a run into the local folder ``dst``; returns its local path."""
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))


class RunLogger:
    """Writes to one MLflow run. Losses are logged asynchronously, in batches."""

    def __init__(self, tracker: Tracker, run_id: str, system_metrics: bool = False) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self._pending_ops: list[Any] = []
        self._monitor = None
        if system_metrics:
            self._monitor = _start_system_metrics(run_id, tracker.uri)

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def losses(self, step: int, values: dict[str, float]) -> None:
        """Per-step training losses, logged without waiting for the store."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"train/{k}", v, now, step) for k, v in values.items()]
        op = self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        if op is not None:
            self._pending_ops.append(op)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()]
        )

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

    def text(self, artifact_file: str, text: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def file(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_dir)

    def image(self, artifact_file: str, image: Any, key: str | None = None, step: int | None = None) -> None:
        """A (H, W, 3) uint8 array; with ``key`` and ``step`` it becomes a step-indexed image in the UI."""
        if key is not None:
            self.client.log_image(self.run_id, image, key=key, step=step)
        else:
            self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def torch_state(self, artifact_file: str, state: dict) -> None:
        import torch

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            torch.save(state, path)
            self.file(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def finish(self, status: str = "FINISHED") -> None:
        for op in self._pending_ops:
            op.wait()
        self._pending_ops.clear()
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # system metrics are a courtesy: never fail a run for them
                pass
            self._monitor = None
        self.client.set_terminated(self.run_id, status)


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

    import bench

    env = {
        "bench": bench.__version__,
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
