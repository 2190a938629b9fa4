"""Metrics, one file per concern; importing this package registers them all."""

from bench.metrics import reconstruction  # noqa: F401  (registration side effects)
from bench.metrics.base import METRICS, EvalContext, Metric, Result, evaluate, register_metric

__all__ = ["METRICS", "EvalContext", "Metric", "Result", "evaluate", "register_metric"]
