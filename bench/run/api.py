"""``bench.run(suite)``: run a suite from Python, as ``bench run`` does, and get its results table.

It raises instead of exiting: ``SuiteError`` for a bad suite (every problem, with its field),
``DataError`` for data that cannot be read, ``TrackingError`` for a store that cannot be reached.
Nothing is written before the checks pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bench.data import from_config
from bench.files import folder_problem
from bench.suite import FieldError, Suite, SuiteError, apply_overrides, load_suite, validate_suite


def _where(suite: str | Path | Mapping[str, Any]) -> str:
    """How errors name the suite: its file, or ``<suite NAME>`` for a dict."""
    return f"<suite {suite.get('name', '?')}>" if isinstance(suite, Mapping) else str(suite)


def _suite(suite: str | Path | Mapping[str, Any], overrides: Iterable[str]) -> Suite:
    if isinstance(suite, Mapping):
        where = _where(suite)
        return validate_suite(apply_overrides(dict(suite), list(overrides), where), where, Path.cwd())
    return load_suite(suite, list(overrides))


def run(
    suite: str | Path | Mapping[str, Any],
    tracking_uri: str | None = None,
    overrides: Iterable[str] = (),
    out: str | Path | None = None,
    restart: bool = False,
    device: str | None = None,
) -> pd.DataFrame:
    """Run a suite (a file path, or the suite as a dict) in this process, as ``bench run`` does:
    finished runs are skipped, interrupted ones resumed. Returns the results table, the numbers
    of ``results.csv`` (one row per model label: mean, std and count over seeds per metric).

    ``overrides`` are ``--set`` items (``"budget.steps=50"``); ``out`` also writes the report
    files there. Raises ``SuiteError``, ``DataError`` or ``TrackingError`` before any work: the
    checks of ``bench run`` (the device, the tracking URI, the report folder, the data and the
    metrics' sizes against its splits, the weights the metrics need, a writable store)."""
    import yaml

    from bench.metrics.generative import preflight
    from bench.report import write_report
    from bench.report.summary import load_store, results_table, summarise
    from bench.run.context import device_problem, local_folder_problem, resolve_device
    from bench.run.driver import run_suite
    from bench.run.executors import LocalExecutor
    from bench.run.progress import default_hooks
    from bench.store.tracking import Tracker, resolve_uri
    from bench.suite import check_tracking_uri, data_errors

    s = _suite(suite, overrides)
    where = _where(suite)
    if device is not None:
        s = s.model_copy(update={"device": device})
    problem = device_problem(s.device)
    if problem:
        raise SuiteError(where, [FieldError("device", problem)])
    uri = resolve_uri(tracking_uri, s.tracking.uri)
    problem = check_tracking_uri(uri)
    if problem:
        raise SuiteError(where, [FieldError("tracking.uri", problem)])
    problem = None if out is None else folder_problem(Path(out))
    if problem:  # the report is written after training: a folder it cannot be is refused first
        raise SuiteError(where, [FieldError("out", problem)])
    problem = local_folder_problem(uri)  # where checkpoints, journals and the cache go
    if problem:
        raise SuiteError(where, [FieldError("environment", problem)])
    data = from_config(s.dataset)  # DataError before any run exists
    problems = data_errors(s, data)  # the metrics' sizes against the real splits
    if problems:
        raise SuiteError(where, problems)
    problems = preflight(s.eval)
    if problems:
        raise SuiteError(where, [FieldError("eval.metrics", p) for p in problems])
    tracker = Tracker(uri, retry_seconds=s.tracking.retry_seconds)
    tracker.check()
    tracker.check_writable()
    resolved_yaml = yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False)
    run_suite(s, resolved_yaml, tracker, resolve_device(s.device), default_hooks(), restart, LocalExecutor())
    if out is not None:
        summary, _ = write_report(tracker, [s.name], Path(out))
        return results_table(summary)
    data = load_store(tracker, [s.name])
    summary = summarise(
        data.runs,
        baselines={s.name: b} if (b := data.baseline(s.name)) else {},
        order={s.name: data.label_order(s.name)},
        references=data.references,
    )
    return results_table(summary)
