"""The ex-post latent GMM's maximum-likelihood fit, in torch on the codes' device.

The same model and stopping rule as scikit-learn's ``GaussianMixture(covariance_type="full")``
with its defaults (k-means initialisation, ``reg_covar`` added to each covariance's diagonal,
EM until the mean log-likelihood per code changes by less than ``tol``), computed with a few
matrix products per step, so it runs on a GPU when the evaluation does. On the CPU the E-step
computes only the (code, component) pairs whose shares can count (``_EStep``). The Dirichlet-process variant
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
    x64: Tensor, shares: Tensor, reg: float, work: dict[str, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and the covariances' Cholesky factors from responsibilities (K, n), all
    float64: the covariances' small eigenvalues are what the likelihood is most sensitive to.
    ``work``: the buffer the codes are gathered into, kept from one step to the next."""
    n, d = x64.shape
    nk = shares.sum(1) + 10 * torch.finfo(shares.dtype).eps  # as scikit-learn: no empty component
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


def _whitening(weights: Tensor, means: Tensor, chol: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 (K, d, d) L_k^-T, (K, d) mu_k L_k^-T and (K,) log w_k - log((2 pi)^(d/2) |L_k|): what
    log w_k + log N(x | mu_k, Sigma_k) = const_k - || x L_k^-T - mu_k L_k^-T ||^2 / 2 is made of."""
    d = means.shape[1]
    eye = torch.eye(d, dtype=chol.dtype, device=chol.device).expand_as(chol)
    inv_t = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)  # (K, d, d): L^-T
    log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # (K,)
    const = -0.5 * d * math.log(2 * math.pi) - log_det + torch.log(weights)
    return inv_t, torch.einsum("kd,kde->ke", means.to(chol.dtype), inv_t), const


def _log_prob(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor, chunk: int = 1024) -> Tensor:
    """log w_k + log N(x | mu_k, Sigma_k) for every code and component: (n, K), in x's dtype.

    The factors are inverted in float64; the product over the codes is one matrix product for all
    components, || x L^-T - mu L^-T ||^2 (``numerics.packed_linear``: oneDNN's GEMM for float32
    on the CPU), in chunks of codes small enough for the products to stay in cache (1,024 64-d
    codes: 1.3x faster than chunks of 4,096 and 2.6x than 60,000 on a 2-core AMD EPYC). Each
    squared norm is one reduction, ``vector_norm`` squared (a square and a sum would write and read
    the products again: the E-step took about 10% longer so on a 2-core Intel Xeon)."""
    k, d = means.shape
    inv_t, shift, const = _whitening(weights, means, chol)
    proj = inv_t.permute(1, 0, 2).reshape(d, k * d).to(x.dtype)  # [L_1^-T ... L_K^-T]
    project = numerics.packed_linear(proj.T.contiguous(), -shift.reshape(k * d).to(x.dtype))
    const = const.to(x.dtype)
    out = []
    for s in range(0, len(x), chunk):
        y = project(x[s : s + chunk])  # x -> x L^-T - mu L^-T
        out.append(torch.linalg.vector_norm(y.view(-1, k, d), dim=2).square_().mul_(-0.5).add_(const))
    return torch.cat(out)


# The screened E-step (``_EStep``). A component whose log-density at a code lies more than this many
# nats below that of the code's best component has a share of it below e^-40 (4.2e-18): the K - 1
# such shares a row can hold move the row's sum, which holds a 1, by less than (K - 1) * 4.2e-18
# (under half a float64 ulp for up to 27 components). The margin is also far above the float32
# rounding of the distances the bounds start from.
SCREEN_NATS = 40.0
# beyond this share of all (code, component) pairs left to compute, the dense product is cheaper
DENSE_SHARE = 0.4
# codes the screened E-step gathers and projects at a time, for one component
SCREEN_ROWS = 4096


class _EStep:
    """log w_k + log N(x | mu_k, Sigma_k) as (K, n) for the float32 codes of a fit, step after
    step, computed only where it can matter (on the CPU; elsewhere every pair, as ``_log_prob``).

    Each step keeps a lower bound on every code's whitened distance || L_k^-1 (x - mu_k) || to every
    component. When the M-step moves component k from (mu, L) to (mu', L'), for every x
    || L'^-1 (x - mu') || >= s || L^-1 (x - mu) || - delta and <= S || L^-1 (x - mu) || + delta,
    with s and S the smallest and largest singular values of L'^-1 L and delta = || L'^-1 (mu - mu') ||.
    So each bound carries to the next step, and the exact distance to a code's best component
    bounds that component's log-density from below. A pair whose log-density is bounded above by
    that less ``SCREEN_NATS`` is left at -inf, a share of 0, and its bound carried on; the rest are
    computed exactly, one component at a time, and their bounds reset. The first step, and any
    step where more than ``DENSE_SHARE`` of the pairs remain, is dense. In a fit to 60,000 64-d
    vae-conv codes in 10 components, 16% of the pairs remained on average, and the fit took the
    same 65 steps to the same likelihood, 1.35 times as fast (docs/performance.md).

    Left out: a nearly dead component's parameters. The shares left out are each below 4.2e-18,
    so where a component's shares sum to less than about n * 1e-15 they are a real part of that
    sum, and its mean and covariance differ from the dense step's (its weight is then below
    1e-15, and the likelihood does not move). A component no code is near at all is computed in
    full (``_pairs``)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x  # float32 (n, d)
        # on a GPU the dense product is one kernel; codes that are not finite have no distances to bound
        self.screen = x.device.type == "cpu" and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
        # the last step's means and factors, the bounds (K, n), each code's best component and its distance
        self.last: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

    def __call__(self, weights: Tensor, means: Tensor, chol: Tensor) -> Tensor:
        if not self.screen:
            return _log_prob(self.x, weights, means, chol).T.contiguous()
        inv_t, shift, const = _whitening(weights, means, chol)
        c32 = const.float()
        pairs = None if self.last is None else self._pairs(means, chol, inv_t, c32)
        if pairs is None:  # every pair, and every bound exact
            lp = _log_prob(self.x, weights, means, chol).T.contiguous()
            bounds = (c32[:, None] - lp).mul_(2).clamp_min_(0).sqrt_()
        else:
            lp, bounds = self._computed(pairs, inv_t.float(), shift.float(), c32)
        best = lp.max(0).indices  # (argmax over dim 0 took 20 times as long on a 2-core Intel Xeon)
        self.last = (means, chol, bounds, best, bounds.gather(0, best[None])[0])
        return lp

    def _pairs(self, means: Tensor, chol: Tensor, inv_t: Tensor, c32: Tensor) -> Tensor | None:
        """(K, n): the pairs whose log-density may lie within ``SCREEN_NATS`` of their code's best
        component's (each code's last best among them), or None where more than ``DENSE_SHARE`` of
        the pairs do. The bounds are carried to this step's components in place."""
        means0, chol0, bounds, best, best_dist = self.last
        sv = torch.linalg.svdvals(torch.linalg.solve_triangular(chol, chol0, upper=False)).float()
        delta = torch.linalg.vector_norm(torch.einsum("kd,kde->ke", means0 - means, inv_t), dim=1).float()
        bounds.mul_(sv[:, -1, None]).sub_(delta[:, None]).clamp_min_(0)
        # the last best component's log-density now, bounded from below, less the screen's margin
        top = best_dist.mul_(sv[best, 0]).add_(delta[best])  # the distance to it, bounded from above
        floor = top.square_().mul_(-0.5).add_(c32[best] - SCREEN_NATS)
        pairs = torch.addcmul(c32[:, None], bounds, bounds, value=-0.5) >= floor
        # a component no code is near (a dead one) is computed at every code, as the dense step does:
        # its mean stays the shares' weighted mean of the codes, not the zeros that no share would give
        pairs[~pairs.any(1)] = True
        return None if int(pairs.sum()) > DENSE_SHARE * pairs.numel() else pairs

    def _computed(self, pairs: Tensor, inv_t: Tensor, shift: Tensor, c32: Tensor) -> tuple[Tensor, Tensor]:
        """The log-densities (K, n) of ``pairs`` (K, n), -inf elsewhere, and the bounds with the
        computed pairs' exact distances: a gather of the pairs' codes and one product per block."""
        x, bounds = self.x, self.last[2]
        comp, rows = torch.nonzero(pairs, as_tuple=True)
        counts = torch.bincount(comp, minlength=len(pairs)).tolist()
        lp = torch.full(pairs.shape, -math.inf, dtype=x.dtype, device=x.device)
        words, first = x.view(torch.int32), 0  # gathered as 32-bit words, as the M-step's codes
        for j, count in enumerate(counts):
            for s in range(first, first + count, SCREEN_ROWS):
                r = rows[s : min(s + SCREEN_ROWS, first + count)]
                y = torch.addmm(-shift[j], words.index_select(0, r).view(x.dtype), inv_t[j])
                dist = torch.linalg.vector_norm(y, dim=1)
                bounds[j].index_copy_(0, r, dist)
                lp[j].index_copy_(0, r, dist.square_().mul_(-0.5).add_(c32[j]))
            first += count
        return lp, bounds


def _normalise(lp: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """Each code's responsibilities and log normaliser (n,) from log w_k + log N(x | k) in float64,
    the components along ``dim`` ((n, K) by default, (K, n) with dim 0), lp's own memory reused:
    exp(lp - max) / sum, and max + log(sum) (``numerics.exp_flushed``: most codes lie hundreds of
    nats from most components, where torch's own exp leaves its fast path)."""
    top = lp.amax(dim, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)  # as logsumexp: a code with only -inf gives -inf
    e = numerics.exp_flushed(lp.sub_(top))
    total = e.sum(dim, keepdim=True)
    return e.div_(total), (top + total.log_()).squeeze(dim)


def fit_em(x: Tensor, k: int, seed: int, max_iter: int = 100, tol: float = 1e-3, reg: float = 1e-6) -> Fit:
    """A K-component full-covariance GMM fitted by EM to codes x (n, d), on x's device.

    The E-step's distances (one product over all codes for every component; on the CPU, after the
    first step, only for the pairs ``_EStep``'s bounds leave) run in float32 on the codes centred
    on their mean; k-means, the responsibilities, the M-step and every sum that
    decides convergence are float64. On 60,000 64-d vae-conv codes this gave the same iterations
    and the same held-out log-likelihood as an all-float64 fit to the seventh significant digit,
    several times faster (docs/performance.md)."""
    x64 = x.detach().double()
    g = torch.Generator(device=x.device).manual_seed(seed)
    shares = torch.nn.functional.one_hot(kmeans(x64, k, g), k).double().T.contiguous()  # (K, n)
    centre = x64.mean(0)
    x64 = x64 - centre
    xc = x64.float()
    work: dict[str, Tensor] = {}  # what the M-steps gather codes into
    estep = _EStep(xc)
    weights, means, chol = _m_step(x64, shares, reg, work)
    lower, converged, n_iter = -math.inf, False, 0
    while n_iter < max_iter and not converged:
        n_iter += 1
        shares, norm = _normalise(estep(weights, means, chol).double(), dim=0)  # E-step
        prev, lower = lower, norm.mean().item()
        weights, means, chol = _m_step(x64, shares, reg, work)  # M-step
        converged = abs(lower - prev) < tol
    final = _normalise(_log_prob(x64, weights, means, chol))[1].mean().item()
    return Fit(weights, means + centre, chol, converged, n_iter, final)


def mean_log_likelihood(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> float:
    """Mean log-likelihood (nats per code) of codes x (n, d) under a GMM: for held-out checks."""
    x = x.detach().double()
    return _normalise(_log_prob(x, weights.double(), means.double(), chol.double()))[1].mean().item()
