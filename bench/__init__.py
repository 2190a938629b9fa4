"""bench: comparative benchmarking of autoencoders, VAEs and GANs under one budget.

From Python: ``bench.run(suite)`` runs a suite and returns its results table;
``bench.evaluate(model_or_generator, dataset=..., metrics=[...])`` scores a model trained
elsewhere. Importing ``bench`` stays light: both import the package on first call.
"""

from __future__ import annotations

from typing import Any

from bench.version import __version__

__all__ = ["__version__", "evaluate", "run"]


def run(suite: Any, tracking_uri: str | None = None, overrides: Any = (), **kwargs: Any) -> Any:
    """Run a suite (a path or a dict) like ``bench run``; returns the results table as a pandas
    DataFrame (the numbers of results.csv). See ``bench.run.api.run``."""
    from bench.run.api import run as _run

    return _run(suite, tracking_uri, overrides, **kwargs)


def evaluate(
    model_or_generator: Any, dataset: Any = "synthetic", metrics: Any = ("fid",), **kwargs: Any
) -> Any:
    """Score a model trained elsewhere, or any callable from noise to images, with bench's metrics;
    returns {metric: Result(value, provenance)}. See ``bench.api.evaluate``."""
    from bench.api import evaluate as _evaluate

    return _evaluate(model_or_generator, dataset, metrics, **kwargs)
