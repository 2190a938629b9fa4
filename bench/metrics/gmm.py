"""The ex-post latent GMM's maximum-likelihood fit, in torch on the codes' device.

The same model and stopping rule as scikit-learn's ``GaussianMixture(covariance_type="full")``
with its defaults (k-means initialisation, ``reg_covar`` added to each covariance's diagonal,
EM until the mean log-likelihood per code changes by less than ``tol``), computed with a few
matrix products per step, so it runs on a GPU when the evaluation does. The Dirichlet-process variant
(``eval.gmm_kind: dirichlet``) stays scikit-learn's ``BayesianGaussianMixture``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench import numerics

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
    d2 = (x - centres).square_().sum(1)
    for _ in range(1, k):  # each next centre drawn with probability proportional to d^2
        # fewer distinct codes than components (a collapsed encoder, coarse quantisation): every code
        # is a centre already, and the next one is drawn uniformly (a duplicate; its cluster empties)
        weight = d2.clamp_min(0)
        weight = weight if bool(weight.sum() > 0) else torch.ones_like(weight)
        pick = torch.multinomial(weight / weight.sum(), 1, generator=generator).to(x.device)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, (x - x[pick]).square_().sum(1))

    def nearest(centres: Tensor) -> Tensor:  # argmin over centres of |c|^2 - 2 x.c
        return torch.addmm(centres.square().sum(1), x, centres.T, alpha=-2).argmin(1)

    labels = nearest(centres)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        # an emptied cluster keeps its centre
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        new = nearest(centres)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


# a code's share of a component below this is left out of that component's covariance (a term
# r * (x - mu)(x - mu)^T with r < 1e-10 moves sums of order n_k * variance by less than float64
# carries for any code whose share is that small): what makes the M-step cheap, as each code has a
# non-negligible share of one or two of the components
_NEGLIGIBLE = 1e-10
# the M-step's covariance sums take the codes a component holds a share of this many at a time,
# gathered into a buffer kept between steps that stays in cache (1 MB of float64 64-d codes):
# a gather, a centring, a scaling and a product per block
GATHER_ROWS = 2048


def _m_step(
    x64: Tensor, resp: Tensor, reg: float, work: dict[str, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and the covariances' Cholesky factors from responsibilities (n, K), all
    float64: the covariances' small eigenvalues are what the likelihood is most sensitive to.
    ``work``: the buffer the codes are gathered into, kept from one step to the next."""
    n, d = x64.shape
    shares = resp.T.contiguous()  # (K, n)
    nk = shares.sum(1) + 10 * torch.finfo(resp.dtype).eps  # as scikit-learn: no empty component
    means = shares @ x64 / nk[:, None]  # (K, d)
    # the codes each component holds a share of: (component, code) pairs, by component
    comp, rows = torch.nonzero(shares > _NEGLIGIBLE, as_tuple=True)
    root = shares[comp, rows].sqrt_()
    counts = torch.bincount(comp, minlength=len(nk)).tolist()
    work = {} if work is None else work
    if work.get("rows", torch.empty(0)).shape != (GATHER_ROWS, d):
        work["rows"] = torch.empty(GATHER_ROWS, d, dtype=torch.int64, device=x64.device)
    cov = torch.zeros(len(nk), d, d, dtype=torch.float64, device=x64.device)
    words, first = x64.view(torch.int64), 0
    for j, count in enumerate(counts):
        for s in range(first, first + count, GATHER_ROWS):
            e = min(s + GATHER_ROWS, first + count)
            # gathered as int64 words (the same bits): torch's float64 row gather is several times slower
            xs = torch.index_select(words, 0, rows[s:e], out=work["rows"][: e - s]).view(torch.float64)
            # the centred form: positive semi-definite by construction, no cancellation
            diff = xs.sub_(means[j]).mul_(root[s:e, None])
            cov[j].addmm_(diff.T, diff)
        first += count
    cov /= nk[:, None, None]
    eye = torch.eye(d, dtype=torch.float64, device=x64.device)
    chol, info = torch.linalg.cholesky_ex(cov + reg * eye)
    if info.any():
        j = int(torch.nonzero(info)[0])
        raise ValueError(f"GMM component {j} has an ill-defined covariance; raise reg_covar")
    return nk / n, means, chol


def _log_prob(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor, chunk: int = 1024) -> Tensor:
    """log w_k + log N(x | mu_k, Sigma_k) for every code and component: (n, K), in x's dtype.

    The factors are inverted in float64; the product over the codes is one matrix product for all
    components, || x L^-T - mu L^-T ||^2 (``numerics.packed_linear``: oneDNN's GEMM for float32
    on the CPU), in chunks of codes small enough for the products to stay in cache (1,024 64-d
    codes: 1.3x faster than chunks of 4,096 and 2.6x than 60,000 on a 2-core AMD EPYC). Each
    squared norm is one reduction, ``vector_norm`` squared (a square and a sum would write and read
    the products again: the E-step took about 10% longer so on a 2-core Intel Xeon)."""
    k, d = means.shape
    eye = torch.eye(d, dtype=chol.dtype, device=chol.device).expand_as(chol)
    inv_t = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)  # (K, d, d): L^-T
    log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # (K,)
    const = (-0.5 * d * math.log(2 * math.pi) - log_det + torch.log(weights)).to(x.dtype)
    proj = inv_t.permute(1, 0, 2).reshape(d, k * d).to(x.dtype)  # [L_1^-T ... L_K^-T]
    shift = torch.einsum("kd,kde->ke", means.to(chol.dtype), inv_t).reshape(k * d).to(x.dtype)
    project = numerics.packed_linear(proj.T.contiguous(), -shift)  # x -> x L^-T - mu L^-T
    out = []
    for s in range(0, len(x), chunk):
        y = project(x[s : s + chunk])
        out.append(torch.linalg.vector_norm(y.view(-1, k, d), dim=2).square_().mul_(-0.5).add_(const))
    return torch.cat(out)


def _normalise(lp: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's responsibilities (n, K) and log normaliser (n,) from log w_k + log N(x | k) (n, K)
    in float64, lp's own memory reused: exp(lp - max) / sum, and max + log(sum)
    (``numerics.exp_flushed``: most codes lie hundreds of nats from most components, where
    torch's own exp leaves its fast path)."""
    top = lp.amax(1, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)  # as logsumexp: a row of -inf gives -inf
    e = numerics.exp_flushed(lp.sub_(top))
    total = e.sum(1, keepdim=True)
    return e.div_(total), (top + total.log_()).squeeze(1)


def fit_em(x: Tensor, k: int, seed: int, max_iter: int = 100, tol: float = 1e-3, reg: float = 1e-6) -> Fit:
    """A K-component full-covariance GMM fitted by EM to codes x (n, d), on x's device.

    The E-step's distances (one product over all codes for every component) run in float32 on
    the codes centred on their mean; k-means, the responsibilities, the M-step and every sum that
    decides convergence are float64. On 60,000 64-d vae-conv codes this gave the same iterations
    and the same held-out log-likelihood as an all-float64 fit to the seventh significant digit,
    several times faster (docs/performance.md)."""
    x64 = x.detach().double()
    g = torch.Generator(device=x.device).manual_seed(seed)
    resp = torch.nn.functional.one_hot(kmeans(x64, k, g), k).double()
    centre = x64.mean(0)
    x64 = x64 - centre
    xc = x64.float()
    work: dict[str, Tensor] = {}  # what the M-steps gather codes into
    weights, means, chol = _m_step(x64, resp, reg, work)
    lower, converged, n_iter = -math.inf, False, 0
    while n_iter < max_iter and not converged:
        n_iter += 1
        resp, norm = _normalise(_log_prob(xc, weights, means, chol).double())  # E-step
        prev, lower = lower, norm.mean().item()
        weights, means, chol = _m_step(x64, resp, reg, work)  # M-step
        converged = abs(lower - prev) < tol
    final = _normalise(_log_prob(x64, weights, means, chol))[1].mean().item()
    return Fit(weights, means + centre, chol, converged, n_iter, final)


def mean_log_likelihood(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> float:
    """Mean log-likelihood (nats per code) of codes x (n, d) under a GMM: for held-out checks."""
    x = x.detach().double()
    return _normalise(_log_prob(x, weights.double(), means.double(), chol.double()))[1].mean().item()
