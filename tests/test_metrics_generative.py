"""Generation metrics: values against independent computations, directions, invariances, caching.

The ``domain`` extractor (a classifier trained once per session on the synthetic data) keeps
these fast; the Inception path is tested in test_inception.py.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import tiny_suite

from bench.config import BudgetConfig, EvalConfig
from bench.data import load_dataset, to_float
from bench.metrics import evaluate
from bench.metrics import features as features_mod
from bench.metrics.domain import classifier
from bench.metrics.features import (
    EXTRACTORS,
    ImageSet,
    RealImages,
    extract,
    fid_statistics,
    frechet_distance,
    real_statistics,
)
from bench.metrics.fidelity import FeatureExtractorDomain
from bench.metrics.generative import GenerationEval
from bench.metrics.samplers import model_samples
from bench.models import build_model
from bench.suite import SuiteError, load_suite
from bench.train import Trainer

CPU = torch.device("cpu")
SYNTHETIC = {"train_size": 1024, "test_size": 512}  # the same everywhere: one classifier per session


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", **SYNTHETIC)


class NoisyIdentity(torch.nn.Module):
    """An "autoencoder" whose reconstruction is the input plus Gaussian noise of std ``sigma``."""

    family = "ae"
    has_encoder = True

    def __init__(self, sigma: float = 0.0):
        super().__init__()
        self.sigma = sigma
        self.w = torch.nn.Parameter(torch.zeros(1))

    def reconstruct(self, x):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return (x + self.sigma * noise).clamp(0, 1)


class BankGAN(torch.nn.Module):
    """A "GAN" whose sampler draws uniformly from a bank of real images: a model that memorised
    some data, with a prior (an index) unlike any latent Gaussian."""

    family = "gan"
    has_encoder = False

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.bank = bank
        self.w = torch.nn.Parameter(torch.zeros(1))

    def sample(self, n, generator=None):
        return to_float(self.bank[torch.randint(len(self.bank), (n,), generator=generator)])


def cfg(metrics, **kw) -> EvalConfig:
    base = {"n_samples": 400, "n_real": 400, "kid_subset_size": 100, "batch_size": 500}
    return EvalConfig(metrics=metrics, **{**base, **kw})


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_matches_scipy_on_small_gaussians():
    rng = np.random.default_rng(0)
    d = 5
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    # independently: ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's matrix square root
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(
        {"mu": torch.from_numpy(m1), "sigma": torch.from_numpy(s1)},
        {"mu": torch.from_numpy(m2), "sigma": torch.from_numpy(s2)},
    )
    assert got == pytest.approx(expected, rel=1e-9)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    s = fid_statistics(x)
    assert s["mu"].dtype == torch.float64 and s["sigma"].dtype == torch.float64
    xd = x.double().numpy()
    np.testing.assert_allclose(s["mu"].numpy(), xd.sum(0) / 50, rtol=1e-12)
    centred = xd - xd.mean(0)
    np.testing.assert_allclose(s["sigma"].numpy(), centred.T @ centred / 49, rtol=1e-10)


def test_fid_of_a_set_with_itself_is_zero(data):
    # the 512 reference images, extracted afresh, against their cached statistics
    gen = GenerationEval(data, cfg(["fid_domain"], n_real=512), 0, CPU)
    prep = gen.prepared(EXTRACTORS.get("domain"))
    cached = real_statistics(gen.reference, prep, "penultimate", 500, CPU)
    again = extract(prep, ImageSet(gen.reference.images), 512, 100, CPU, 0)
    assert abs(frechet_distance(cached, fid_statistics(again["penultimate"]))) < 1e-6


def test_fid_grows_monotonically_with_noise(data):
    sigmas = [0.0, 0.05, 0.1, 0.2, 0.4]
    fids = [
        evaluate(NoisyIdentity(s), data, cfg(["fid_domain_rec"]), 0, CPU)["fid_domain_rec"].value
        for s in sigmas
    ]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


# --------------------------------------------------------------------------- precision / recall / modes


def test_precision_recall_direction_and_modes(data):
    """Samples from 3 of the 10 classes: precision high, recall low; all classes: both high."""
    subset = data.train_x[data.train_y < 3]  # held-out (train) images; the reference is the test split
    metrics = ["precision_domain", "recall_domain", "modes_covered"]
    few = evaluate(BankGAN(subset), data, cfg(metrics), 0, CPU)
    full = evaluate(BankGAN(data.train_x), data, cfg(metrics), 0, CPU)
    assert few["precision_domain"].value > 0.8 and few["recall_domain"].value < 0.45
    assert full["precision_domain"].value > 0.8 and full["recall_domain"].value > 0.8
    assert few["modes_covered"].value == 3 and full["modes_covered"].value == 10

    # modes and their KL by hand: the same samples, the same classifier, our own histogram
    images = model_samples(BankGAN(subset), 400, seed=0)
    fe = FeatureExtractorDomain("bench-domain", ["logits"], str(classifier(data, CPU).path))
    (logits,) = fe(images.repeat(1, 3, 1, 1))
    p = np.bincount(logits.argmax(1).numpy(), minlength=10) / 400
    kl = sum(q * math.log(q * 10) for q in p if q > 0)
    assert few["modes_covered"].extra["modes_covered_kl"] == pytest.approx(kl, rel=1e-9)
    assert few["modes_covered"].extra["modes_covered_kl"] > full["modes_covered"].extra["modes_covered_kl"]


def test_is_domain_is_bounded_by_the_number_of_classes(data):
    r = evaluate(BankGAN(data.train_x), data, cfg(["is_domain"]), 0, CPU)["is_domain"]
    assert 1.0 <= r.value <= 10.0 and r.value > 5  # real images of 10 balanced classes score high
    assert r.provenance["splits"] == 10 and r.extra["is_domain_std"] >= 0


# --------------------------------------------------------------------------- invariance, provenance


ALL_DOMAIN = [
    "fid_domain",
    "kid_domain",
    "precision_domain",
    "recall_domain",
    "is_domain",
    "modes_covered",
    "fid_domain_gmm",
    "fid_domain_rec",
]


@pytest.fixture(scope="module")
def vae(data):
    torch.manual_seed(0)
    model = build_model("vae-mlp", {}, data.image_shape)
    Trainer(model, data, BudgetConfig(steps=60, batch_size=64), 0).run()
    return model


def test_results_do_not_depend_on_the_batch_size(data, vae):
    small = evaluate(vae, data, cfg(ALL_DOMAIN, n_samples=300, n_real=300, batch_size=7), 0, CPU)
    large = evaluate(vae, data, cfg(ALL_DOMAIN, n_samples=300, n_real=300, batch_size=250), 0, CPU)
    assert set(small) == set(ALL_DOMAIN)
    for k in ALL_DOMAIN:
        assert small[k].value == pytest.approx(large[k].value, rel=1e-5, abs=1e-9), k
    bank = BankGAN(data.train_x)
    m = ["precision_domain", "recall_domain"]
    a = evaluate(bank, data, cfg(m, batch_size=7), 0, CPU)
    b = evaluate(bank, data, cfg(m, batch_size=400), 0, CPU)
    assert {k: r.value for k, r in a.items()} == {k: r.value for k, r in b.items()}


def test_every_value_carries_its_provenance(data, vae):
    r = evaluate(vae, data, cfg(["fid_domain", "fid_domain_gmm"]), 3, CPU)
    for name, sampler in (("fid_domain", "prior"), ("fid_domain_gmm", "gmm")):
        p = r[name].provenance
        assert p["extractor"] == "domain" and p["sampler"] == sampler
        assert p["n_real"] == 400 and p["n_fake"] == 400 and p["reference_split"] == "test"
        assert len(p["weights_sha256"]) == 64 and p["torch_fidelity"] == "0.4.0"
    gmm = r["fid_domain_gmm"].provenance
    assert gmm["fit_on"] == "1024 training codes"
    assert gmm["gmm_kind"] == "em" and gmm["gmm_components"] == 10  # what a published GMM column pins
    assert r["fid_domain"].provenance["sampler_detail"] == "VAE.sample: the prior"


def test_the_same_seed_gives_the_same_scores(data, vae):
    a = evaluate(vae, data, cfg(["fid_domain", "kid_domain"]), 5, CPU)
    b = evaluate(vae, data, cfg(["fid_domain", "kid_domain"]), 5, CPU)
    assert a["fid_domain"].value == b["fid_domain"].value and a["kid_domain"].value == b["kid_domain"].value


def test_n_real_is_capped_by_the_split_and_stated(data):
    r = evaluate(BankGAN(data.train_x), data, cfg(["fid_domain"], n_real=10000), 0, CPU)["fid_domain"]
    assert r.provenance["n_real"] == 512  # the whole test split of this dataset


# --------------------------------------------------------------------------- caching


def test_reference_statistics_are_cached_and_not_recomputed(data, monkeypatch, bench_cache):
    gen = GenerationEval(data, cfg(["fid_domain"], n_real=333), 0, CPU)
    prep = gen.prepared(EXTRACTORS.get("domain"))
    first = real_statistics(gen.reference, prep, "penultimate", 100, CPU)
    assert list((bench_cache / "statistics").glob("*.pt"))

    def no_recompute(*a, **k):
        raise AssertionError("reference features were recomputed")

    monkeypatch.setattr(features_mod, "extract", no_recompute)
    second = real_statistics(gen.reference, prep, "penultimate", 100, CPU)
    assert torch.equal(first["mu"], second["mu"]) and torch.equal(first["sigma"], second["sigma"])


def test_a_second_evaluation_never_touches_the_reference_images(data, vae, monkeypatch):
    metrics = ["fid_domain", "kid_domain", "precision_domain"]
    first = evaluate(vae, data, cfg(metrics, n_real=350), 0, CPU)
    monkeypatch.setattr(RealImages, "images", property(lambda self: pytest.fail("reference images re-read")))
    second = evaluate(vae, data, cfg(metrics, n_real=350), 0, CPU)
    assert {k: r.value for k, r in first.items()} == {k: r.value for k, r in second.items()}


# --------------------------------------------------------------------------- validation


def suite_errors(write_suite, **eval_over) -> list[str]:
    ev = {"metrics": ["fid_domain"], "n_samples": 200, "n_real": 200, **eval_over}
    path = write_suite(tiny_suite(eval=ev))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    return [line.removeprefix(f"{path}: ") for line in str(e.value).splitlines()]


def test_validate_rejects_a_kid_subset_larger_than_n(write_suite):
    errors = suite_errors(write_suite, metrics=["kid_domain"], kid_subset_size=500)
    assert errors == [
        "eval.metrics.0: kid_domain: eval.kid_subset_size (500) is larger than eval.n_samples (200); "
        "KID draws subsets of that size from both sets",
        "eval.metrics.0: kid_domain: eval.kid_subset_size (500) is larger than eval.n_real (200); "
        "KID draws subsets of that size from both sets",
    ]


def test_validate_rejects_inception_score_without_logits(write_suite):
    errors = suite_errors(write_suite, metrics=["fid_domain", "is"], kid_subset_size=100)
    assert len(errors) == 1 and errors[0].startswith("eval.metrics.1: is: the Inception Score needs")
    assert "eval.inception_weights: torch-fidelity" in errors[0]


def test_validate_rejects_unknown_and_misplaced_generation_metrics(write_suite):
    errors = suite_errors(write_suite, metrics=["fid_domian"], kid_subset_size=100)
    assert errors[0].startswith("eval.metrics.0: unknown metric 'fid_domian'; did you mean 'fid_domain'")
    path = write_suite(tiny_suite(models=[{"name": "gan-mlp"}], eval={"metrics": ["fid_domain_gmm"]}))
    with pytest.raises(SuiteError, match="'fid_domain_gmm' applies to ae/vae models"):
        load_suite(path)


def test_valid_generation_settings_load(write_suite):
    ev = {"metrics": ["fid_domain", "kid_domain", "is_domain"], "n_samples": 200, "n_real": 100}
    suite = load_suite(write_suite(tiny_suite(eval={**ev, "kid_subset_size": 100})))
    assert suite.eval.reference_split == "test" and suite.eval.gmm_components == 10


# --------------------------------------------------------------------------- FD-infinity, density, coverage


def test_fd_inf_density_coverage_through_the_domain_extractor(data):
    metrics = ["fid_domain", "fd_inf_domain", "density_domain", "coverage_domain"]
    c = cfg(metrics, fd_inf_min_n=100, fd_inf_points=5)
    real = evaluate(BankGAN(data.train_x), data, c, 0, CPU)
    few = evaluate(BankGAN(data.train_x[data.train_y < 3]), data, c, 0, CPU)
    assert real["fd_inf_domain"].value < real["fid_domain"].value
    assert real["fd_inf_domain"].provenance["counts"] == [100, 175, 250, 325, 400]
    assert real["fd_inf_domain"].extra["fd_inf_domain_slope"] > 0
    assert 0.7 < real["density_domain"].value < 1.3 and real["coverage_domain"].value > 0.8
    assert few["coverage_domain"].value < 0.5 < real["coverage_domain"].value
    assert real["density_domain"].provenance["neighborhood"] == 5


def test_validate_rejects_fd_inf_without_room_to_fit(write_suite):
    errors = suite_errors(write_suite, metrics=["fd_inf_domain"], kid_subset_size=100)
    assert errors == [
        "eval.metrics.0: fd_inf_domain: eval.fd_inf_min_n (5000) must be below eval.n_samples (200); "
        "FD-infinity fits FID at sample counts from the one to the other"
    ]


def test_an_image_set_gives_a_batch_as_its_images_one_by_one():
    """torch's DataLoader takes a batch through ``__getitems__``: the same uint8 3-channel images."""
    from torch.utils.data import DataLoader

    from bench.metrics.features import ImageSet

    images = torch.randint(0, 256, (10, 1, 5, 4), dtype=torch.uint8)
    images[3] = 0
    s = ImageSet(images)
    one_by_one = torch.stack([s[i] for i in range(10)])
    assert one_by_one.shape == (10, 3, 5, 4) and torch.equal(one_by_one[:, 1], images[:, 0])
    assert torch.equal(torch.cat(list(DataLoader(s, batch_size=4))), one_by_one)
    assert torch.equal(torch.stack(s.__getitems__([7, 2, 3])), one_by_one[[7, 2, 3]])


def test_pad_images_centres_each_image_in_a_zero_border():
    from bench.metrics.pixels import pad_images

    x = torch.full((2, 3, 28, 27), 255, dtype=torch.uint8)
    y = pad_images(x, 32)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[:, :, 2:30, 2:29], x)  # margins 2 / 2 and 2 / 3 (the odd pixel right)
    assert int(y.sum()) == int(x.sum())  # the border is zeros
    square = torch.full((1, 1, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(pad_images(square, 28), square)  # already that side: unchanged
    with pytest.raises(ValueError, match="28x27 cannot be padded to 16x16"):
        pad_images(x, 16)


def test_a_padding_smaller_than_the_images_is_refused_with_its_field(write_suite, capsys):
    from bench.cli import main

    path = write_suite(tiny_suite(eval={"metrics": ["fid_domain"], "inception_pad_to": 24}))
    assert main(["validate", str(path), "--data"]) == 2
    assert f"{path}: eval.inception_pad_to: 24 is smaller than the images (28x28)" in capsys.readouterr().err
