"""The ex-post GMM's EM in torch against scikit-learn's GaussianMixture on the same codes."""

import math

import pytest
import torch
from sklearn.mixture import GaussianMixture

from bench.metrics import gmm
from bench.metrics.gmm import fit_em, mean_log_likelihood


def mixture(n: int, seed: int) -> torch.Tensor:
    """Three full-covariance Gaussians in 6 dimensions, weights 0.5 / 0.3 / 0.2."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0] * 6, [4.0] * 6, [-4.0, 4.0, -4.0, 4.0, -4.0, 4.0]], dtype=torch.float64)
    mix = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    a = torch.randn(3, 6, 6, generator=g, dtype=torch.float64) * 0.4 + torch.eye(6, dtype=torch.float64)
    eps = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return means[mix] + torch.einsum("nij,nj->ni", a[mix], eps)


@pytest.mark.parametrize("seed", [0, 1])
def test_em_reaches_scikit_learns_held_out_likelihood(seed):
    train, test = mixture(6000, 0), mixture(3000, 1)
    fit = fit_em(train, 3, seed)
    sk = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, random_state=seed).fit(train.numpy())
    ours = mean_log_likelihood(test, fit.weights, fit.means, fit.chol)
    theirs = sk.score(test.numpy())
    assert abs(ours - theirs) < 0.01 * abs(theirs)
    assert fit.converged and fit.n_iter <= 100
    assert sorted(fit.weights.tolist()) == pytest.approx([0.2, 0.3, 0.5], abs=0.03)
    assert fit.log_likelihood == pytest.approx(mean_log_likelihood(train, fit.weights, fit.means, fit.chol))


def test_the_same_seed_gives_the_same_fit():
    x = mixture(2000, 3)
    a, b = fit_em(x, 4, 7), fit_em(x, 4, 7)
    assert torch.equal(a.means, b.means) and torch.equal(a.chol, b.chol)


def test_the_fit_stops_at_max_iter():
    fit = fit_em(mixture(2000, 3), 5, 0, max_iter=2)
    assert fit.n_iter == 2 and not fit.converged


def test_codes_on_a_grid_with_more_components_than_clusters_still_fit():
    """Quantised codes: few distinct values, so some components hold (nearly) identical codes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (3000, 4), generator=g).double() / 2  # 81 grid points in 4-d
    fit = fit_em(x, 10, 0)
    assert torch.isfinite(fit.chol).all() and math.isfinite(fit.log_likelihood)


@pytest.mark.parametrize("distinct", [1, 3])
def test_fewer_distinct_codes_than_components_fit_as_scikit_learn(distinct):
    """A collapsed encoder: k-means++ runs out of distinct codes to seed from."""
    x = torch.randn(distinct, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.repeat(100 // distinct, 1)
    fit = fit_em(x, 10, 0)
    sk = GaussianMixture(10, covariance_type="full", reg_covar=1e-6, random_state=0)
    with pytest.warns(Warning):  # scikit-learn warns that it found fewer clusters
        sk.fit(x.numpy())
    assert fit.converged and math.isfinite(fit.log_likelihood)
    assert fit.log_likelihood == pytest.approx(sk.score(x.numpy()), rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.0, 100.0])
def test_components_with_fewer_codes_than_dimensions_or_a_wide_scale_fit(scale):
    """256 isotropic 64-d codes in 10 components (about 26 codes each, fewer than the dimensions):
    each covariance is singular but for reg_covar, so its smallest eigenvalues are 1e-6 beside
    largest ones of up to scale^2 * 64: they must survive the products."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g, dtype=torch.float64) * scale
    fit = fit_em(x, 10, 0)
    assert torch.isfinite(fit.chol).all() and math.isfinite(fit.log_likelihood)


def test_low_rank_codes_far_from_the_origin_fit_as_at_the_origin():
    """Rank-20 codes in 64 dimensions, shifted by 1,000: the fit sees the same data up to a
    translation, so it reaches the same likelihood."""
    g = torch.Generator().manual_seed(1)
    one = {"generator": g, "dtype": torch.float64}
    x = torch.randn(3000, 20, **one) @ torch.randn(20, 64, **one)
    here, there = fit_em(x, 5, 0), fit_em(x + 1000.0, 5, 0)
    assert there.n_iter == here.n_iter
    assert there.log_likelihood == pytest.approx(here.log_likelihood, rel=1e-6)
    assert torch.allclose(there.means - 1000.0, here.means, atol=1e-4)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("gather_rows", [2048, 7])
def test_the_m_step_gives_the_weighted_covariances_whatever_blocks_the_codes_are_gathered_in(
    monkeypatch, gather_rows, sparse
):
    """Five components, with GATHER_ROWS 7 each component's codes summed in blocks of 7, the last
    one short. Every code with a share of every component, or (``sparse``) component j > 0 with a
    negligible share (1e-30) of all codes but every (j + 2)-th, so the components hold 400, 134,
    100, 80 and 67 codes: the covariances are the responsibility-weighted ones, computed directly."""
    monkeypatch.setattr(gmm, "GATHER_ROWS", gather_rows)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64) * torch.arange(1.0, 7.0, dtype=torch.float64)
    resp = torch.randn(400, 5, generator=g, dtype=torch.float64).mul(3).softmax(1)
    if sparse:
        i, j = torch.arange(400)[:, None], torch.arange(5)[None, :]
        resp[(j > 0) & (i % (j + 2) != 0)] = 1e-30
        assert (resp > gmm._NEGLIGIBLE).sum(0).tolist() == [400, 134, 100, 80, 67]
    weights, means, chol = gmm._m_step(x, resp.T.contiguous(), reg=1e-6)
    nk = resp.sum(0)
    torch.testing.assert_close(weights, nk / 400)
    torch.testing.assert_close(means, resp.T @ x / nk[:, None])
    for j in range(5):
        diff = x - means[j]
        cov = (resp[:, j, None] * diff).T @ diff / nk[j] + 1e-6 * torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(chol[j] @ chol[j].T, cov)


def test_the_responsibilities_and_normaliser_are_softmax_and_logsumexp():
    """Rows whose components lie from 0 to thousands of nats apart (where exp underflows)."""
    g = torch.Generator().manual_seed(0)
    spread = torch.logspace(-1, 3.5, 3000, dtype=torch.float64)[:, None]
    lp = torch.randn(3000, 10, generator=g, dtype=torch.float64) * spread
    resp, norm = gmm._normalise(lp.clone())
    torch.testing.assert_close(norm, torch.logsumexp(lp, 1), rtol=1e-14, atol=0)
    torch.testing.assert_close(resp, lp.softmax(1), rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(resp.sum(1), torch.ones(3000, dtype=torch.float64), rtol=1e-14, atol=0)


def test_a_row_without_a_finite_log_density_normalises_as_logsumexp_does():
    lp = torch.tensor([[-math.inf, -math.inf], [0.0, math.inf], [-1.0, -2.0]], dtype=torch.float64)
    _, norm = gmm._normalise(lp.clone())
    assert torch.equal(norm, torch.logsumexp(lp, 1))


def test_normalising_along_the_first_dimension_is_normalising_the_transpose():
    lp = torch.randn(500, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 300
    resp, norm = gmm._normalise(lp.clone())
    resp_t, norm_t = gmm._normalise(lp.T.contiguous(), dim=0)
    torch.testing.assert_close(resp_t, resp.T, rtol=1e-14, atol=1e-300)
    torch.testing.assert_close(norm_t, norm, rtol=1e-14, atol=0)


def overlapping(n: int, k: int, d: int, seed: int) -> torch.Tensor:
    """k correlated Gaussians in d dimensions whose means lie a few standard deviations apart."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 3
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    mix = torch.randint(k, (n,), generator=g)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    return means[mix] + torch.einsum("nij,nj->ni", a[mix], eps)


@pytest.mark.parametrize("margin", [40.0, 3.0])
def test_the_screened_e_step_leaves_out_only_pairs_below_the_margin(monkeypatch, margin):
    """EM steps on overlapping components: at every step the screened E-step's log-densities equal
    the dense ones wherever it computed them, and every pair it left out lies more than the margin
    below its code's best component (checked against the dense values, with the margin cut to 3
    nats, where a bound that is not one would show). Most steps leave most pairs out."""
    monkeypatch.setattr(gmm, "SCREEN_NATS", margin)
    x64 = overlapping(4000, 8, 6, 0)
    x64 = x64 - x64.mean(0)
    xc = x64.float()
    estep = gmm._EStep(xc)
    g = torch.Generator().manual_seed(0)
    shares = torch.nn.functional.one_hot(gmm.kmeans(x64, 8, g), 8).double().T.contiguous()
    weights, means, chol = gmm._m_step(x64, shares, 1e-6)
    left_out = []
    for _ in range(30):
        lp = estep(weights, means, chol)
        dense = gmm._log_prob(xc, weights, means, chol).T
        computed = torch.isfinite(lp)
        torch.testing.assert_close(lp[computed], dense[computed], rtol=1e-5, atol=1e-3)
        below = dense.amax(0, keepdim=True) - dense  # nats below each code's best component
        assert (below[~computed] > margin - 1e-3).all()
        left_out.append((~computed).float().mean().item())
        shares, _ = gmm._normalise(lp.double(), dim=0)
        weights, means, chol = gmm._m_step(x64, shares, 1e-6)
    assert left_out[0] == 0  # the first step computes every pair
    assert sum(share > 0.5 for share in left_out) >= 20, left_out


def test_a_screened_fit_is_the_dense_fit(monkeypatch):
    """The same codes fitted with the screen and without it: the same steps, the same fit."""
    x = overlapping(6000, 10, 8, 1)
    screened = fit_em(x, 10, 0)
    monkeypatch.setattr(gmm, "DENSE_SHARE", -1.0)  # every step dense
    dense = fit_em(x, 10, 0)
    assert screened.n_iter == dense.n_iter
    assert screened.log_likelihood == pytest.approx(dense.log_likelihood, rel=1e-10)
    torch.testing.assert_close(screened.means, dense.means, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(screened.chol, dense.chol, rtol=1e-6, atol=1e-8)


def test_a_component_no_code_is_near_is_computed_at_every_code():
    """Nine clusters far apart and a tenth component far from them all: the screen would leave
    every pair of the tenth out, and its shares, however small, would all be 0 where the dense
    step gives them."""
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(9, 4, generator=g, dtype=torch.float64) * 40
    x = (centres[torch.arange(2000) % 9] + torch.randn(2000, 4, generator=g, dtype=torch.float64)).float()
    weights = torch.full((10,), 0.1, dtype=torch.float64)
    means = torch.cat([centres, torch.full((1, 4), 1000.0, dtype=torch.float64)])
    chol = torch.eye(4, dtype=torch.float64).expand(10, 4, 4).clone()
    estep = gmm._EStep(x)
    estep(weights, means, chol)
    lp = estep(weights, means, chol)
    assert torch.isfinite(lp[9]).all()
    torch.testing.assert_close(lp[9], gmm._log_prob(x, weights, means, chol)[:, 9], rtol=1e-5, atol=1e-3)
    assert torch.isfinite(lp[:9]).float().mean() < 0.3  # elsewhere the screen left most pairs out


def test_the_bound_on_the_best_components_distance_follows_its_move():
    """Ten unit-covariance components 100 apart but for component 1, 9 from component 0: at
    component 0's codes component 1 lies 40.5 nats below, beyond the margin, and is left out. When
    component 0 moves 3 away from its codes, towards component 1, the gap shrinks to 36 nats, so
    those pairs must be computed: the best component's distance is bounded from above by its move."""
    centres = torch.zeros(10, 2, dtype=torch.float64)
    centres[:, 0] = torch.arange(10) * 100.0
    centres[1, 0] = 9.0
    x = centres[torch.arange(2000) % 10].float()
    weights = torch.full((10,), 0.1, dtype=torch.float64)
    chol = torch.eye(2, dtype=torch.float64).expand(10, 2, 2).clone()
    estep = gmm._EStep(x)
    estep(weights, centres, chol)
    codes = torch.arange(2000) % 10 == 0
    moved = centres.clone()
    moved[0, 0] = 3.0
    lp = estep(weights, moved, chol)
    dense = gmm._log_prob(x, weights, moved, chol).T
    assert (dense[0, codes] - dense[1, codes]).max() < gmm.SCREEN_NATS
    assert torch.isfinite(lp[1, codes]).all()
    assert not torch.isfinite(lp).all()  # elsewhere pairs are left out
