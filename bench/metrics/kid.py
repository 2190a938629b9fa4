"""KID as torch-fidelity defines it (``metric_kid``), computed in torch on the features' device.

The estimator and its subsets are torch-fidelity's: ``subsets`` pairs of subsets of
``subset_size`` drawn without replacement by ``numpy.random.RandomState(seed).choice`` (generated
features first, then real ones, subset after subset), the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, and the unbiased MMD^2 of each pair; the mean and the standard
deviation over subsets are reported. torch-fidelity computes the kernels subset by subset in
NumPy; here a few subsets at a time go through one batched matrix product, and the kernels' row
sums are added up in float64. ``tests/test_eval_torch.py`` checks the values against
torch-fidelity's.
"""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor

DEGREE, COEF0 = 3, 1.0  # torch-fidelity's defaults (kid_kernel_poly_degree, kid_kernel_poly_coef0)
KERNEL_VALUES = 1 << 22  # kernel entries held at once, per kernel (16 MB in float32)


def _kernel_sums(a: Tensor, b: Tensor, same: bool) -> Tensor:
    """Sum of each subset's kernel matrix (g,), without its diagonal when ``same``: each row summed
    in the kernel's float32 (as torch-fidelity sums them), the rows in float64."""
    g, m, d = a.shape
    base = torch.full((1, 1, 1), COEF0, dtype=a.dtype, device=a.device).expand(g, m, b.shape[1])
    k = torch.baddbmm(base, a, b.transpose(1, 2), alpha=1.0 / d).pow_(DEGREE)  # (g, m, m)
    rows = k.sum(2)
    if same:
        rows -= torch.diagonal(k, dim1=1, dim2=2)
    return rows.double().sum(1)


def draws(n_fake: int, n_real: int, subsets: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """torch-fidelity's subsets: indices (subsets, size) into the generated and the real features,
    drawn in its order (generated, then real, subset after subset) from ``RandomState(seed)``."""
    if size > min(n_fake, n_real):
        raise ValueError(f"KID subsets of {size} drawn from {n_fake} generated and {n_real} real features")
    rng = np.random.RandomState(seed)
    fake, real = [], []
    for _ in range(subsets):
        fake.append(rng.choice(n_fake, size, replace=False))
        real.append(rng.choice(n_real, size, replace=False))
    return torch.from_numpy(np.stack(fake)), torch.from_numpy(np.stack(real))


def _groups(idx: Tensor) -> list[slice]:
    size = idx.shape[1]
    group = max(1, KERNEL_VALUES // (size * size))
    return [slice(s, s + group) for s in range(0, len(idx), group)]


def within_sums(features: Tensor, idx: Tensor) -> Tensor:
    """Each subset's kernel sum without the diagonal (subsets,), float64: the real features' part of
    KID depends on nothing generated, so it can be computed once and kept."""
    x, idx = features.float(), idx.to(features.device)
    return torch.cat([_kernel_sums(x[idx[g]], x[idx[g]], same=True) for g in _groups(idx)])


def kid(
    fake: Tensor, real: Tensor, subsets: int, size: int, seed: int, real_sums: Tensor | None = None
) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 between generated ``fake`` (N, d) and
    ``real`` (M, d) features, torch-fidelity's subsets and polynomial kernel; ``real_sums`` are
    ``within_sums(real, draws(...)[1])`` when given."""
    idx_fake, idx_real = draws(len(fake), len(real), subsets, size, seed)
    if real_sums is None:
        real_sums = within_sums(real, idx_real)
    fake, real = fake.float(), real.float()
    idx_fake, idx_real = idx_fake.to(fake.device), idx_real.to(real.device)
    mmds = []
    for g in _groups(idx_fake):
        x, y = fake[idx_fake[g]], real[idx_real[g]]  # (g, m, d)
        within = (_kernel_sums(x, x, same=True) + real_sums[g].to(x.device)) / (size * (size - 1))
        mmds.append(within - 2 * _kernel_sums(x, y, same=False) / (size * size))
    mmd = torch.cat(mmds).cpu().numpy()
    return float(np.mean(mmd)), float(np.std(mmd))
