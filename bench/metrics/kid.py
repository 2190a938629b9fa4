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


def kid(fake: Tensor, real: Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 between generated ``fake`` (N, d) and
    ``real`` (M, d) features, torch-fidelity's subsets and polynomial kernel."""
    n1, n2, m = len(fake), len(real), subset_size
    if m > min(n1, n2):
        raise ValueError(f"KID subsets of {m} drawn from {n1} generated and {n2} real features")
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n1, m, replace=False), rng.choice(n2, m, replace=False)) for _ in range(subsets)]
    idx_fake = torch.from_numpy(np.stack([f for f, _ in draws])).to(fake.device)  # (subsets, m)
    idx_real = torch.from_numpy(np.stack([r for _, r in draws])).to(real.device)
    fake, real = fake.float(), real.float()
    group = max(1, KERNEL_VALUES // (m * m))
    mmds = []
    for s in range(0, subsets, group):
        x, y = fake[idx_fake[s : s + group]], real[idx_real[s : s + group]]  # (g, m, d)
        within = (_kernel_sums(x, x, same=True) + _kernel_sums(y, y, same=True)) / (m * (m - 1))
        mmds.append(within - 2 * _kernel_sums(x, y, same=False) / (m * m))
    mmd = torch.cat(mmds).cpu().numpy()
    return float(np.mean(mmd)), float(np.std(mmd))
