"""Objective-level tests: each variant's loss against values computed independently by hand."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from bench.data import load_dataset, to_float
from bench.models import build_model
from bench.models.ae import corrupt, decoder_nll
from bench.models.gan import gradient_penalty
from bench.models.vae import gaussian_kl, imq_mmd
from bench.train import STEP_KINDS

SHAPE = (1, 28, 28)


# --------------------------------------------------------------------------- likelihoods and KL


def test_gaussian_kl_matches_the_closed_form_by_hand():
    # KL(N(1, 4) || N(0, 1)) = 1/2 (sigma^2 + mu^2 - 1 - ln sigma^2) = 1/2 (4 + 1 - 1 - ln 4) = 2 - ln 2
    kl = gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]]))
    assert kl.item() == pytest.approx(2 - math.log(2), rel=1e-6)
    # two dimensions add: + KL(N(0, 1) || N(0, 1)) = 0 and + KL(N(-2, 1) || N(0, 1)) = 2
    kl = gaussian_kl(torch.tensor([[1.0, 0.0, -2.0]]), torch.tensor([[math.log(4.0), 0.0, 0.0]]))
    assert kl.item() == pytest.approx(2 - math.log(2) + 0 + 2, rel=1e-6)


def test_gaussian_kl_agrees_with_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    ref = torch.distributions.kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), ref, atol=1e-5)


def test_vae_loss_uses_the_closed_form_kl_of_its_posterior():
    torch.manual_seed(0)
    m = build_model("vae-mlp", {}, SHAPE)
    x = torch.rand(4, *SHAPE)
    mu, logvar = m.posterior(x)
    var = logvar.exp()
    by_hand = (0.5 * (var + mu**2 - 1 - logvar)).sum(1).mean()
    assert m.loss(x)["kl"].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_decoder_nll_is_the_negative_log_likelihood_of_its_decoder():
    torch.manual_seed(0)
    recon, x = torch.rand(3, 1, 4, 4) * 0.98 + 0.01, torch.rand(3, 1, 4, 4)
    gauss = -Normal(recon, math.sqrt(0.5)).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(decoder_nll("mse", recon, x), gauss, atol=1e-4)
    binary = (x > 0.5).float()
    bern = -Bernoulli(probs=recon).log_prob(binary).flatten(1).sum(1)
    assert torch.allclose(decoder_nll("bce", recon, binary), bern, atol=1e-4)


def test_iwae_log_weights_by_hand():
    torch.manual_seed(0)
    m = build_model("iwae", {"backbone": "mlp", "hidden": [32], "latent_dim": 3, "k": 4}, (1, 4, 4)).eval()
    x = (torch.rand(2, 1, 4, 4) > 0.5).float()  # binary, so the Bernoulli log-probability is defined
    with torch.no_grad():
        lw = m.log_weights(x, 4, torch.Generator().manual_seed(1))
        eps = torch.randn((4, 2, 3), generator=torch.Generator().manual_seed(1))
        mu, logvar = m.posterior(x)
        std = (0.5 * logvar).exp()
        z = mu + eps * std
        for i in range(4):
            recon = m.decode(z[i])
            log_px = Bernoulli(probs=recon).log_prob(x).flatten(1).sum(1)  # bce = Bernoulli cross-entropy
            log_pz = Normal(0.0, 1.0).log_prob(z[i]).sum(1)
            log_qz = Normal(mu, std).log_prob(z[i]).sum(1)
            assert torch.allclose(lw[i], log_px + log_pz - log_qz, atol=1e-3)
        bound = m.iw_bound(x, torch.Generator().manual_seed(1))
        assert torch.allclose(bound, torch.logsumexp(lw, 0) - math.log(4))
        assert (bound >= lw.mean(0) - 1e-6).all()  # log-mean-exp >= mean: at least the ELBO's estimate


# --------------------------------------------------------------------------- AE variants


def test_rae_and_sparse_ae_losses_by_hand():
    torch.manual_seed(0)
    x = torch.rand(4, *SHAPE)
    rae = build_model("rae", {"latent_l2": 0.5}, SHAPE).eval()  # eval: batch norm is deterministic
    z = rae.encode(x)
    rec = ((rae.decode(z) - x) ** 2).sum() / 4
    out = rae.loss(x)
    assert out["loss"].item() == pytest.approx(rec.item() + 0.5 * 0.5 * (z**2).sum().item() / 4, rel=1e-5)
    sparse = build_model("sparse-ae", {"l1": 0.1}, SHAPE).eval()
    z = sparse.encode(x)
    assert (z >= 0).all()  # ReLU code
    rec = ((sparse.decode(z) - x) ** 2).sum() / 4
    assert sparse.loss(x)["loss"].item() == pytest.approx(
        rec.item() + 0.1 * z.abs().sum().item() / 4, rel=1e-5
    )


def test_dae_corruptions():
    x = torch.full((200, 1, 10, 10), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = corrupt(x, "gaussian", 0.3, g)
    expected = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert torch.equal(noisy, expected) and noisy.min() == 0 and noisy.max() == 1  # clipped to [0, 1]
    small = corrupt(x, "gaussian", 0.05, g)  # 10 sigma from the edges: no clipping, the std is sigma
    assert (small - x).std().item() == pytest.approx(0.05, rel=0.03)
    masked = corrupt(x, "mask", 0.25, g)
    assert set(masked.unique().tolist()) == {0.0, 0.5}
    assert (masked == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_dae_reconstructs_the_clean_image_from_a_corrupted_one():
    torch.manual_seed(0)
    m = build_model("dae", {"backbone": "mlp", "hidden": [32], "noise": 0.5}, SHAPE).eval()
    x = torch.rand(4, *SHAPE)
    torch.manual_seed(3)
    loss = m.loss(x)["loss"]
    torch.manual_seed(3)
    noisy = (x + 0.5 * torch.randn(x.shape)).clamp(0, 1)
    assert loss.item() == pytest.approx((((m.reconstruct(noisy) - x) ** 2).sum() / 4).item(), rel=1e-5)


# --------------------------------------------------------------------------- WAE-MMD


def test_imq_mmd_by_hand():
    torch.manual_seed(0)
    a, b = torch.randn(3, 2), torch.randn(4, 2) + 1

    def k(u, v, c):
        return c / (c + ((u - v) ** 2).sum().item())

    total = 0.0
    for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0):
        c = 2 * 2 * s
        aa = sum(k(a[i], a[j], c) for i in range(3) for j in range(3) if i != j) / (3 * 2)
        bb = sum(k(b[i], b[j], c) for i in range(4) for j in range(4) if i != j) / (4 * 3)
        ab = sum(k(a[i], b[j], c) for i in range(3) for j in range(4)) / (3 * 4)
        total += aa + bb - 2 * ab
    assert imq_mmd(a, b).item() == pytest.approx(total, rel=1e-5)


def test_imq_mmd_is_small_for_equal_distributions_and_grows_with_the_shift():
    torch.manual_seed(0)
    p = torch.randn(400, 8)
    same, near, far = torch.randn(400, 8), torch.randn(400, 8) + 0.5, torch.randn(400, 8) + 2
    vals = [imq_mmd(p, q).item() for q in (same, near, far)]
    assert abs(vals[0]) < 0.01 and vals[0] < vals[1] < vals[2]


# --------------------------------------------------------------------------- GAN penalties


def test_wgan_gp_penalty_is_zero_for_a_unit_norm_linear_critic():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1), torch.nn.Flatten(0))
    with torch.no_grad():
        critic[1].weight.copy_(torch.randn(1, 784))
        critic[1].weight.div_(critic[1].weight.norm())  # ||w|| = 1: 1-Lipschitz with gradient norm 1
    points = torch.rand(16, *SHAPE)
    assert gradient_penalty(critic, points).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        critic[1].weight.mul_(3.0)  # gradient norm 3 everywhere: penalty (3 - 1)^2 = 4
    assert gradient_penalty(critic, points).item() == pytest.approx(4.0, rel=1e-5)


def test_wgan_gp_discriminator_loss_carries_the_penalty():
    torch.manual_seed(0)
    m = build_model("wgan-gp", {}, SHAPE)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1), torch.nn.Flatten(0))
    with torch.no_grad():
        critic[1].weight.fill_(1 / 28.0)  # ||w|| = sqrt(784) / 28 = 1
    m.discriminator = critic
    x, z = torch.rand(8, *SHAPE), m.sample_z(8)
    out = m.d_loss(x, z)
    assert out["gp"].item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        fake = m.generator(z)
    assert out["loss"].item() == pytest.approx((critic(fake).mean() - critic(x).mean()).item(), rel=1e-5)


# --------------------------------------------------------------------------- VQ-VAE


def test_vq_vae_ema_update_by_hand():
    torch.manual_seed(0)
    m = build_model(
        "vq-vae", {"backbone": "mlp", "hidden": [16], "num_codes": 3, "code_dim": 2, "latent_dim": 2}, SHAPE
    )
    m.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    m.ema_sum.copy_(m.codebook)
    m.ema_count.fill_(1.0)
    ze = torch.tensor([[[1.0, 1.0]], [[9.0, 9.0]], [[11.0, 11.0]]])  # (B=3, L=1, D=2)
    idx, zq = m.quantise(ze)
    assert idx.flatten().tolist() == [0, 1, 1]
    m._ema_update(ze, idx)
    decay = 0.99
    count = torch.tensor([decay + 0.01 * 1, decay + 0.01 * 2, decay])
    sums = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]) * decay + 0.01 * torch.tensor(
        [[1.0, 1.0], [20.0, 20.0], [0.0, 0.0]]
    )
    n, eps = count.sum(), 1e-5
    smoothed = (count + eps) / (n + 3 * eps) * n
    assert torch.allclose(m.codebook, sums / smoothed[:, None], atol=1e-5)
    assert m.latent_bits() == pytest.approx(1 * math.log2(3))


def test_vq_vae_uses_more_than_one_code_after_training_on_synthetic_data():
    data = load_dataset("synthetic", train_size=256, test_size=64)
    torch.manual_seed(0)
    m = build_model("vq-vae", {"backbone": "mlp", "hidden": [64]}, data.image_shape)
    initial = m.codebook.clone()
    step = STEP_KINDS[m.step_kind](m)
    recs = []
    for s in range(40):
        i = (s * 32) % 256
        recs.append(step(m, to_float(data.train_x[i : i + 32]), s)["rec"].item())
    m.eval()
    with torch.no_grad():
        used = m.code_indices(to_float(data.test_x)).unique()
    assert used.numel() > 1
    moved = (m.codebook - initial).norm(dim=1) > 1e-3
    assert moved[used].all()  # the codes in use follow their vectors (EMA)
    assert sum(recs[-5:]) < sum(recs[:5])  # and the model learns through the quantiser
    assert m.latent_bits() == 16 * 8  # 16 positions x log2(256)
