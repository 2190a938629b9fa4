"""The statistics of a comparison over training seeds.

Mean with a Student-t confidence interval and Welch's unequal-variance t-test against a
baseline. scipy does the distribution work; this
module decides what is defined (two or more seeds, some spread) and returns NaN otherwise, so a
report never shows an interval or a p-value that the data cannot support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    return a[np.isfinite(a)]


def ci_half_width(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval of the mean: t_{(1+c)/2, n-1} * s / sqrt(n).

    NaN for fewer than two values (no spread to estimate); 0 when every value is equal.
    """
    from scipy import stats

    a = _finite(values)
    n = len(a)
    if n < 2:
        return math.nan
    s = float(np.std(a, ddof=1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * s / math.sqrt(n)


@dataclass(frozen=True)
class Welch:
    """Welch's two-sided t-test of equal means without assuming equal variances."""

    t: float
    df: float
    p: float

    def significant(self, alpha: float = 0.05) -> bool:
        return math.isfinite(self.p) and self.p < alpha


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test of ``a`` against ``b``; NaN when a side has under two values or neither side
    varies and the means are equal. Two constant sides with different means (two deterministic
    codecs) differ with certainty: t infinite, p 0."""
    from scipy import stats

    x, y = _finite(a), _finite(b)
    if len(x) < 2 or len(y) < 2:
        return Welch(math.nan, math.nan, math.nan)
    if np.var(x) == 0 and np.var(y) == 0:
        diff = float(x[0] - y[0])
        return (
            Welch(math.copysign(math.inf, diff), math.nan, 0.0)
            if diff
            else Welch(math.nan, math.nan, math.nan)
        )
    r = stats.ttest_ind(x, y, equal_var=False)
    return Welch(float(r.statistic), float(r.df), float(r.pvalue))
