"""Density/coverage against the authors' ``prdc`` package; FD-infinity against FID's known bias."""

import numpy as np
import pytest
import torch

from bench.metrics.features import fid_statistics, frechet_distance
from bench.metrics.prdc import density_coverage, fd_infinity, fd_infinity_counts, knn_radii

prdc = pytest.importorskip("prdc")  # the dev extra installs it


@pytest.mark.parametrize("k", [1, 3, 5])
def test_density_coverage_agree_with_the_authors_package(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 12))
    fake = rng.normal(loc=0.3, scale=1.2, size=(250, 12))
    want = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    got = density_coverage(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), k)
    # the features are float32 here as in bench; prdc reads the same float32 values
    want32 = prdc.compute_prdc(
        real_features=real.astype(np.float32).astype(np.float64),
        fake_features=fake.astype(np.float32).astype(np.float64),
        nearest_k=k,
    )
    assert got["density"] == pytest.approx(want32["density"], abs=1e-6)
    assert got["coverage"] == pytest.approx(want32["coverage"], abs=1e-6)
    assert abs(got["density"] - want["density"]) < 0.05  # float32 rounding moves few points, if any
    assert 0 < got["coverage"] < 1 and got["density"] > 0


def test_density_coverage_over_several_blocks(monkeypatch):
    import bench.metrics.prdc as mod

    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(130, 5)), rng.normal(size=(90, 5)) * 1.5
    whole = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), 5)
    monkeypatch.setattr(mod, "BLOCK", 17)
    blocked = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), 5)
    want = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert blocked == whole
    assert blocked["density"] == pytest.approx(want["density"], abs=1e-6)
    assert blocked["coverage"] == pytest.approx(want["coverage"], abs=1e-6)


def test_knn_radius_excludes_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="needs at least 5 points"):
        knn_radii(x, 4)


def test_fd_infinity_of_the_reference_distribution_is_near_zero_and_below_fid():
    """Samples of the reference Gaussian itself: FID at n is pure sample-size bias (about d^2 / (2n)
    for identity covariance), FD-infinity removes it."""
    d, n = 64, 4000
    g = torch.Generator().manual_seed(0)
    ref = {"mu": torch.zeros(d, dtype=torch.float64), "sigma": torch.eye(d, dtype=torch.float64)}
    fake = torch.randn(n, d, generator=g, dtype=torch.float64)

    def fid_of(f):
        return frechet_distance(fid_statistics(f), ref)

    fid = fid_of(fake)
    r = fd_infinity(fake, fid_of, min_n=1000, points=15, seed=0)
    assert fid > 0.2  # the bias FD-infinity is there to remove
    assert abs(r["fd_inf"]) < 0.15 * fid
    assert r["fd_inf"] < fid
    assert r["slope"] > 0  # FID falls as n grows


def test_fd_infinity_recovers_a_true_distance():
    """A shifted Gaussian: FD-infinity lands near the true Fréchet distance ||shift||^2 = 1."""
    d, n = 64, 4000
    g = torch.Generator().manual_seed(1)
    ref = {"mu": torch.zeros(d, dtype=torch.float64), "sigma": torch.eye(d, dtype=torch.float64)}
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = 1.0
    fake = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
    r = fd_infinity(fake, lambda f: frechet_distance(fid_statistics(f), ref), 1000, 15, seed=0)
    fid = frechet_distance(fid_statistics(fake), ref)
    assert abs(r["fd_inf"] - 1.0) < abs(fid - 1.0)
    assert r["fd_inf"] == pytest.approx(1.0, abs=0.1)
    assert fid > 1.15  # at this n, FID's bias is larger than FD-infinity's error


def test_fd_infinity_counts_follow_the_authors_spacing():
    assert fd_infinity_counts(50000, 5000, 15)[:3] == [5000, 8214, 11428]
    assert fd_infinity_counts(50000, 5000, 15)[-1] == 50000
    assert fd_infinity_counts(10, 5, 15) == [5, 6, 7, 8, 9, 10]  # duplicates collapse
    with pytest.raises(ValueError, match="below n"):
        fd_infinity_counts(100, 100, 15)
