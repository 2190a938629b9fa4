"""Density and coverage (Naeem et al. 2020) and FD-infinity (Chong & Forsyth 2020) from features.

Neither is in torch-fidelity. Both work on any (N, D) features, so every extractor gets them.

Density and coverage follow the authors' ``prdc`` package: Euclidean distances; the radius of a
real point is the distance to its k-th nearest other real point; every comparison is a strict
``<``. With D[i, j] the distance from real i to fake j and r_i the radius of real i:

- density  = 1/(k M) * sum_j #{i : D[i, j] < r_i}   (M fakes; 1 means "as dense as the real data")
- coverage = 1/N * #{i : min_j D[i, j] < r_i}        (N reals; the fraction of real balls hit)

Distances are computed in float64 blocks of ``BLOCK`` rows, so 10,000 x 10,000 never sits in
memory at once.

FD-infinity: FID is biased upwards by a term linear in 1/n (n generated samples). FID is computed
at ``points`` sample counts evenly spaced from ``min_n`` to all n (each an independent random
subset of the generated features, without replacement; the reference statistics stay fixed),
a line is fitted by least squares to FID against 1/n, and its value at 1/n = 0 is FD-infinity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

BLOCK = 2000  # rows of a distance block


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the k+1-th smallest, self included)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k = {k} needs at least {k + 1} points (got {len(x)})")
    out = []
    for i in range(0, len(x), BLOCK):
        d = _distances(x[i : i + BLOCK], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """Density and coverage of generated features ``fake`` (M, D) against ``real`` (N, D)."""
    radii = knn_radii(real, k)
    inside = torch.zeros(len(fake), dtype=torch.float64)  # per fake: real balls it lies in
    covered = []
    for i in range(0, len(real), BLOCK):
        d = _distances(real[i : i + BLOCK], fake)
        r = radii[i : i + BLOCK, None]
        inside += (d < r).sum(0, dtype=torch.float64)
        covered.append(d.min(1).values < radii[i : i + BLOCK])
    return {
        "density": float(inside.mean() / k),
        "coverage": float(torch.cat(covered).double().mean()),
    }


def fd_infinity_counts(n: int, min_n: int, points: int) -> list[int]:
    """The sample counts of the fit: ``points`` integers evenly spaced from ``min_n`` to ``n``."""
    if not 2 <= min_n < n:
        raise ValueError(f"FD-infinity needs min_n ({min_n}) of at least 2 and below n ({n})")
    return sorted({int(v) for v in np.linspace(min_n, n, points)})


def fd_infinity(
    fake: torch.Tensor,
    fid_of: Callable[[torch.Tensor], float],
    min_n: int,
    points: int,
    seed: int,
) -> dict[str, float]:
    """FD-infinity of generated features ``fake`` (N, D); ``fid_of(features)`` is FID against the
    fixed reference. Returns the intercept ``fd_inf`` and the fit's slope (FID per 1/n)."""
    counts = fd_infinity_counts(len(fake), min_n, points)
    g = torch.Generator().manual_seed(seed)
    fids = [fid_of(fake[torch.randperm(len(fake), generator=g)[:n]]) for n in counts]
    slope, intercept = np.polyfit(1.0 / np.asarray(counts, dtype=np.float64), np.asarray(fids), 1)
    return {"fd_inf": float(intercept), "slope": float(slope)}
