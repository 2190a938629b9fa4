"""Metrics, one file per concern; importing this package registers them all.

Registration order is the column order of reports: reconstruction, latent, then generation.
"""

from bench.metrics import reconstruction  # noqa: F401  (registration side effects)

# isort: split
from bench.metrics import latent  # noqa: F401

# isort: split
from bench.metrics import likelihood  # noqa: F401

# isort: split
from bench.metrics import generative  # noqa: F401
from bench.metrics.base import (
    METRICS,
    EvalContext,
    Metric,
    MetricFailure,
    Result,
    data_problems,
    evaluate,
    failure_reason,
    register_metric,
)

__all__ = [
    "METRICS",
    "EvalContext",
    "Metric",
    "MetricFailure",
    "Result",
    "data_problems",
    "evaluate",
    "failure_reason",
    "register_metric",
]
