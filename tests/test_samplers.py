"""Samplers: the post-training latent fits and the noise -> latent maps."""

import pytest
import torch

from bench.data import load_dataset, to_float
from bench.metrics import samplers
from bench.metrics.samplers import GMM, fit_latent_sampler, latent_gmm, train_codes
from bench.models import build_model


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=1024, test_size=512)


def test_gaussian_fit_matches_the_training_codes_and_runs_once(data, monkeypatch):
    model = build_model("ae-mlp", {}, data.image_shape)
    assert fit_latent_sampler(model, data, batch_size=100)
    with torch.no_grad():
        codes = model.encode(to_float(data.train_x)).double()
    torch.testing.assert_close(model.prior_mean.double(), codes.mean(0), rtol=1e-5, atol=1e-6)
    cov = model.prior_chol.double() @ model.prior_chol.double().T
    torch.testing.assert_close(cov, torch.cov(codes.T), rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(model, "encode", lambda x: pytest.fail("encoded again in the same state"))
    assert fit_latent_sampler(model, data, batch_size=100)  # same parameters: nothing recomputed
    with torch.no_grad():
        model.decoder[0].weight.add_(1.0)  # "training" changed the model: its codes must be recomputed
    with pytest.raises(pytest.fail.Exception, match="encoded again"):
        train_codes(model, data)


def test_codes_are_encoded_again_when_a_buffer_changes(data):
    """A VQ-VAE's codebook is a buffer, not a parameter: moving it changes the codes."""
    model = build_model("vq-vae", {}, data.image_shape)
    before = train_codes(model, data)
    assert train_codes(model, data) is before  # same state: the memo
    with torch.no_grad():
        model.codebook.add_(1.0)
    after = train_codes(model, data)
    assert after is not before and not torch.equal(after, before)


def test_codes_are_encoded_again_when_weights_move_but_keep_their_sums(data):
    """Two weights swapped: every tensor's sum is what it was, the codes are not."""
    model = build_model("ae-mlp", {}, data.image_shape)
    before = train_codes(model, data)
    w = next(p for p in model.encoder.parameters() if p.dim() == 2)
    with torch.no_grad():
        i = int(torch.argmax(w[:, 0]))
        j = int(torch.argmin(w[:, 0]))
        w[i, 0], w[j, 0] = w[j, 0].clone(), w[i, 0].clone()
    after = train_codes(model, data)
    with torch.no_grad():
        truth = model.eval().encode(to_float(data.train_x))
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, truth)


def test_a_subset_of_the_test_split_is_encoded_as_itself(data):
    """A subset keeps its dataset's checksum: the split sizes keep its codes apart."""
    from bench.data import _subset
    from bench.metrics.codes import encoded

    model = build_model("ae-mlp", {}, data.image_shape).eval()
    assert len(encoded(model, data, "test").codes) == len(data.test_x)
    part = _subset(data, None, 100)
    codes = encoded(model, part, "test").codes
    with torch.no_grad():
        torch.testing.assert_close(codes, model.encode(to_float(part.test_x)))


def test_fitting_the_prior_keeps_the_codes(data, monkeypatch):
    """The AE's prior buffers move with its fit; its encoder does not: no second encoding."""
    model = build_model("ae-mlp", {}, data.image_shape)
    codes = train_codes(model, data)
    assert fit_latent_sampler(model, data)
    monkeypatch.setattr(model, "encode", lambda x: pytest.fail("encoded again"))
    assert train_codes(model, data) is codes


def test_models_with_a_fixed_prior_need_no_fit(data):
    assert not fit_latent_sampler(build_model("vae-mlp", {}, data.image_shape), data)
    assert not fit_latent_sampler(build_model("gan-mlp", {}, data.image_shape), data)


def test_gmm_samples_follow_the_mixture():
    gmm = GMM(
        weights=torch.tensor([0.2, 0.8]),
        means=torch.tensor([[-5.0, 0.0], [5.0, 1.0]]),
        chol=torch.stack([torch.eye(2) * 0.5, torch.eye(2) * 1.0]),  # 5+ std apart
        converged=True,
        n_iter=1,
        n_fit=0,
    )
    z = gmm.sample_from_normal(torch.randn(40000, 3, generator=torch.Generator().manual_seed(0)))
    right = z[:, 0] > 0
    assert right.float().mean().item() == pytest.approx(0.8, abs=0.01)
    torch.testing.assert_close(z[right].mean(0), torch.tensor([5.0, 1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z[~right].std(0), torch.tensor([0.5, 0.5]), atol=0.02, rtol=0)
    torch.testing.assert_close(z[right].std(0), torch.tensor([1.0, 1.0]), atol=0.03, rtol=0)


def test_gmm_fit_finds_clustered_codes(data):
    class Clusters(torch.nn.Module):
        """An encoder whose codes are 3 tight clusters (by class): a GMM must find them."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            c = (x.flatten(1).argmax(1) % 3).float()  # some deterministic grouping of the images
            return torch.stack([c * 10, -c * 10], 1) + 0.01 * x.flatten(1)[:, :2]

    enc = Clusters()
    gmm = latent_gmm(enc, data, components=3, seed=0, batch_size=128)
    centres = sorted(gmm.means[:, 0].round().tolist())
    assert centres == [0.0, 10.0, 20.0] and gmm.converged and gmm.n_fit == 1024


def test_own_samples_come_in_fixed_seeded_chunks(data):
    """model.sample in chunks of CHUNK with per-chunk seeds: a function of the run seed alone."""
    model = build_model("gan-mlp", {}, data.image_shape).eval()
    n = samplers.CHUNK + 7
    x = samplers.model_samples(model, n, seed=3)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
    with torch.no_grad():
        g = torch.Generator().manual_seed(samplers.chunk_seed(3, 1))
        second = model.sample(7, g).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert torch.equal(x[samplers.CHUNK :], second)
    assert torch.equal(samplers.model_samples(model, n, seed=3), x)
    assert not torch.equal(samplers.model_samples(model, n, seed=4), x)


def test_draw_gives_images_of_the_dataset_shape(data):
    model = build_model("vae-mlp", {}, data.image_shape).eval()
    for sampler in ("prior", "gmm", "rec"):
        x = samplers.draw(model, sampler, 6, data, seed=0)
        assert x.shape == (6, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    a, b = samplers.draw(model, "prior", 4, data, seed=1), samplers.draw(model, "prior", 4, data, seed=1)
    assert torch.equal(a, b)


def test_inside_one_evaluation_the_fingerprint_is_hashed_once_and_again_after_a_change(data, monkeypatch):
    """``codes.pinned()`` (what ``evaluate`` runs its metrics in) hashes the weights once while they
    stay as they are, and again when one changes in place; outside it, every look-up hashes, so a
    change through ``.data`` (which leaves autograd's version counter alone) is seen."""
    from bench.metrics import codes as codes_mod

    model = build_model("ae-mlp", {}, data.image_shape)
    hashes = []
    real = codes_mod._fingerprint
    monkeypatch.setattr(codes_mod, "_fingerprint", lambda tensors: hashes.append(1) or real(tensors))
    with codes_mod.pinned():
        first = train_codes(model, data)
        assert train_codes(model, data) is first and len(hashes) == 1
        with torch.no_grad():
            model.encoder[1].weight.add_(1.0)  # in place: the version counter moves
        moved = train_codes(model, data)
        assert len(hashes) == 2 and not torch.equal(moved, first)
        assert train_codes(model, data) is moved and len(hashes) == 2
    model.encoder[1].weight.data.sub_(1.0)  # through .data: no version change, seen outside pinned()
    back = train_codes(model, data)
    assert len(hashes) == 3
    torch.testing.assert_close(back, first)


def test_an_evaluation_sees_a_change_through_data_made_between_two_calls(data):
    """Each ``evaluate`` pins afresh: weights moved through ``.data`` between two calls give the
    second call the new codes."""
    from bench.config import EvalConfig
    from bench.metrics import evaluate

    model = build_model("ae-mlp", {}, data.image_shape)
    cfg = EvalConfig(metrics=["recon_mse"])
    before = evaluate(model, data, cfg, 0, torch.device("cpu"))["recon_mse"].value
    next(model.encoder.parameters()).data.add_(0.5)  # the codes move, autograd's counter does not
    after = evaluate(model, data, cfg, 0, torch.device("cpu"))["recon_mse"].value
    assert after != before
