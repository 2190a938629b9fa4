"""The ex-post latent GMM's maximum-likelihood fit, in torch on the codes' device.

The same model and stopping rule as scikit-learn's ``GaussianMixture(covariance_type="full")``
with its defaults (k-means initialisation, ``reg_covar`` added to each covariance's diagonal,
EM until the mean log-likelihood per code changes by less than ``tol``), computed in float64
with one matrix product per component and step instead of scikit-learn's per-sample Python-level
work, so it runs on a GPU when the evaluation does. The Dirichlet-process variant
(``eval.gmm_kind: dirichlet``) stays scikit-learn's ``BayesianGaussianMixture``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Fit:
    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    chol: Tensor  # (K, d, d) lower Cholesky factors of the covariances
    converged: bool
    n_iter: int
    log_likelihood: float  # mean log-likelihood per code at the end of the fit (nats)


def kmeans(x: Tensor, k: int, generator: torch.Generator, max_iter: int = 100) -> Tensor:
    """Labels (n,) of Lloyd's k-means from a k-means++ seeding (Arthur & Vassilvitskii 2007)."""
    n = len(x)
    first = torch.randint(n, (1,), generator=generator, device=generator.device).to(x.device)
    centres = x[first]
    d2 = torch.cdist(x, centres).square().squeeze(1)
    for _ in range(1, k):  # each next centre drawn with probability proportional to d^2
        pick = torch.multinomial(d2.clamp_min(0) / d2.sum(), 1, generator=generator).to(x.device)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, torch.cdist(x, x[pick]).square().squeeze(1))
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (n, K)
        counts = onehot.sum(0)
        # an emptied cluster keeps its centre
        centres = torch.where(counts[:, None] > 0, onehot.T @ x / counts.clamp_min(1)[:, None], centres)
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _m_step(x: Tensor, resp: Tensor, reg: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and the covariances' Cholesky factors from responsibilities (n, K)."""
    n, d = x.shape
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # as scikit-learn: no empty component
    means = resp.T @ x / nk[:, None]  # (K, d)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    # Sigma_k = sum_i r_ik x_i x_i^T / n_k - mu_k mu_k^T: one product per component, no centred copy
    second = torch.stack([x.T @ (resp[:, j, None] * x) for j in range(len(nk))]) / nk[:, None, None]
    cov = second - means[:, :, None] * means[:, None, :] + reg * eye
    chol, info = torch.linalg.cholesky_ex(cov)
    for j in torch.nonzero(info).flatten().tolist():
        # cancellation made a nearly empty or degenerate component indefinite: the centred form is
        # positive semi-definite by construction
        diff = x - means[j]
        chol[j], bad = torch.linalg.cholesky_ex((resp[:, j, None] * diff).T @ diff / nk[j] + reg * eye)
        if bad:
            raise ValueError(f"GMM component {j} has an ill-defined covariance; raise reg_covar")
    return nk / n, means, chol


def _log_prob(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """log w_k + log N(x | mu_k, Sigma_k) for every code and component: (n, K)."""
    d = x.shape[1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand_as(chol)
    inv_t = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)  # (K, d, d): L^-T
    log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # (K,)
    # || L^-1 (x - mu) ||^2 = || x L^-T - mu L^-T ||^2: one matrix product per component
    maha = torch.stack([(x @ t - mu @ t).square_().sum(1) for t, mu in zip(inv_t, means)], 1)
    return -0.5 * (d * math.log(2 * math.pi) + maha) - log_det + torch.log(weights)


def fit_em(
    x: Tensor, k: int, seed: int, max_iter: int = 100, tol: float = 1e-3, reg: float = 1e-6
) -> Fit:
    """A K-component full-covariance GMM fitted by EM to codes x (n, d), in float64 on x's device."""
    x = x.detach().double()
    g = torch.Generator(device=x.device).manual_seed(seed)
    resp = torch.nn.functional.one_hot(kmeans(x, k, g), k).double()
    weights, means, chol = _m_step(x, resp, reg)
    lower, converged, n_iter = -math.inf, False, 0
    while n_iter < max_iter and not converged:
        n_iter += 1
        lp = _log_prob(x, weights, means, chol)  # E-step
        norm = torch.logsumexp(lp, 1)
        prev, lower = lower, norm.mean().item()
        weights, means, chol = _m_step(x, (lp - norm[:, None]).exp(), reg)  # M-step
        converged = abs(lower - prev) < tol
    final = torch.logsumexp(_log_prob(x, weights, means, chol), 1).mean().item()
    return Fit(weights, means, chol, converged, n_iter, final)


def mean_log_likelihood(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> float:
    """Mean log-likelihood (nats per code) of codes x (n, d) under a GMM: for held-out checks."""
    x = x.detach().double()
    return torch.logsumexp(_log_prob(x, weights.double(), means.double(), chol.double()), 1).mean().item()
