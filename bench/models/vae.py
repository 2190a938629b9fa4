"""VAE-style models: the Gaussian VAE (beta a parameter), IWAE, WAE-MMD and VQ-VAE.

All run on the shared backbones of ``nets.py``; each subclass changes the objective (and, where
the model defines one, its prior for sampling), nothing else.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench import numerics
from bench.models.ae import Autoencoder, CodecParams, decoder_nll, reconstruction_loss
from bench.models.base import register

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample: (B, d) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


class GaussianVAEParams(CodecParams):
    recon_loss: Literal["mse", "bce"] = "bce"


class VAEParams(GaussianVAEParams):
    beta: float = Field(1.0, ge=0, description="weight of the KL term: beta-VAE when != 1")


class VAE(Autoencoder):
    """VAE with the reparameterisation trick; ``beta`` weights the KL term.

    ``encode`` gives the posterior mean; ``importance_samples`` draws from q(z | x) for the
    likelihood metrics (``bench.metrics.likelihood``), whatever beta it trained with.
    """

    family = "vae"
    Params = VAEParams
    capabilities = frozenset({"likelihood", "posterior"})
    enc_factor = 2  # the encoder outputs (mu, logvar)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def encode(self, x):
        return self.posterior(x)[0]

    def loss(self, x):
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z), x)
        kl = gaussian_kl(mu, logvar).mean()
        return {"loss": rec + self.params.beta * kl, "rec": rec, "kl": kl}

    def sample(self, n, generator=None):
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.params.latent_dim, generator=generator, device=device))

    def importance_samples(self, x, k, generator=None):
        mu, logvar = self.posterior(x)
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device)  # (k, B, d)
        z = mu + eps * (0.5 * logvar).exp()
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # (k, B)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
        return z, log_pz - log_qz

    def likelihood_provenance(self) -> dict[str, Any]:
        return {"posterior": "diagonal Gaussian q(z | x)", "prior": "N(0, I)"}


class IWAEParams(GaussianVAEParams):
    k: int = Field(5, ge=1, le=1000, description="importance samples per image (training and bound)")


class IWAE(VAE):
    """Importance-weighted autoencoder (Burda et al. 2016): trains on the k-sample bound
    log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x); k = 1 is the VAE's ELBO."""

    Params = IWAEParams

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples, with the training objective's
        decoder likelihood: (B, ...) -> (k, B)."""
        z, log_ratio = self.importance_samples(x, k, generator)  # (k, B, d), (k, B)
        recon = self.decode(z.flatten(0, 1))  # (k*B, C, H, W)
        log_px_z = -decoder_nll(self.params.recon_loss, recon, x.expand(k, *x.shape).flatten(0, 1))
        return log_px_z.view(k, -1) + log_ratio

    def iw_bound(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The k-sample importance-weighted lower bound on log p(x), per image: (B,)."""
        k = self.params.k
        return torch.logsumexp(self.log_weights(x, k, generator), 0) - math.log(k)

    def loss(self, x):
        bound = self.iw_bound(x).mean()
        return {"loss": -bound, "iw_bound": bound.detach()}

# --------------------------------------------------------------------------- WAE-MMD

IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)


def imq_mmd(a: Tensor, b: Tensor, scales: tuple[float, ...] = IMQ_SCALES) -> Tensor:
    """Unbiased MMD^2 between samples a (n, d) and b (m, d) with the inverse multiquadratic kernel
    k(x, y) = C / (C + ||x - y||^2), summed over C = 2 d s for each s in ``scales`` (Tolstikhin et
    al. 2018, prior N(0, I))."""
    n, d = a.shape
    m = b.shape[0]
    daa, dbb, dab = _sq_dists(a, a), _sq_dists(b, b), _sq_dists(a, b)
    off_a = ~torch.eye(n, dtype=torch.bool, device=a.device)
    off_b = ~torch.eye(m, dtype=torch.bool, device=a.device)
    total = a.new_zeros(())
    for s in scales:
        c = 2.0 * d * s
        kaa, kbb, kab = c / (c + daa), c / (c + dbb), c / (c + dab)
        total = total + kaa[off_a].sum() / (n * (n - 1)) + kbb[off_b].sum() / (m * (m - 1)) - 2 * kab.mean()
    return total


class WAEParams(CodecParams):
    mmd_weight: float = Field(10.0, ge=0, description="weight of the MMD between codes and the prior")


class WAE(Autoencoder):
    """Wasserstein autoencoder with the MMD penalty (Tolstikhin et al. 2018): a deterministic
    encoder whose batch of codes is pushed towards the prior N(0, I); samples decode prior draws."""

    family = "vae"
    Params = WAEParams

    def loss(self, x):
        z = self.encode(x)
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z), x)
        mmd = imq_mmd(z, torch.randn_like(z)) if len(x) > 1 else z.new_zeros(())
        return {"loss": rec + self.params.mmd_weight * mmd, "rec": rec, "mmd": mmd}

    def sample(self, n, generator=None):
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.params.latent_dim, generator=generator, device=device))


# --------------------------------------------------------------------------- VQ-VAE


class VQVAEParams(CodecParams):
    num_codes: int = Field(256, ge=2, le=65536, description="codebook size K")
    code_dim: int = Field(
        4, ge=1, le=4096, description="size of one code vector; latent_dim / code_dim positions"
    )
    commitment: float = Field(0.25, ge=0, description="weight of the commitment loss")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="decay of the codebook's moving averages")

    @model_validator(mode="after")
    def _positions(self):
        if self.latent_dim % self.code_dim:
            raise ValueError(
                f"latent_dim ({self.latent_dim}) must be a multiple of code_dim ({self.code_dim})"
            )
        return self


class VQVAE(Autoencoder):
    """VQ-VAE (van den Oord et al. 2017) with an EMA codebook: the encoder's output is cut into
    L = latent_dim / code_dim vectors, each replaced by its nearest of K codes; the codebook follows
    the moving average of the vectors assigned to each code (Laplace-smoothed counts), and a
    commitment loss keeps the encoder near its codes. A code costs log2(K) bits per position.

    The prior is uniform over codes, as in the VQ-VAE objective; no autoregressive prior is fitted,
    so samples (independent uniform codes) show what that prior gives, not the model's best.
    """

    family = "vae"
    Params = VQVAEParams
    capabilities = frozenset({"likelihood"})

    def __init__(self, params: VQVAEParams, image_shape):
        super().__init__(params, image_shape)
        k, d = params.num_codes, params.code_dim
        self.positions = params.latent_dim // d
        codebook = torch.randn(k, d)
        self.register_buffer("codebook", codebook)
        # counts start at one so an unused code keeps its initial vector instead of collapsing
        self.register_buffer("ema_count", torch.ones(k))
        self.register_buffer("ema_sum", codebook.clone())

    def _vectors(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(len(x), self.positions, self.params.code_dim)  # (B, L, D)

    def quantise(self, ze: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code for each vector: (B, L, D) -> indices (B, L), code vectors (B, L, D)."""
        flat = ze.reshape(-1, ze.shape[-1])
        cb = self.codebook
        d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.T + cb.pow(2).sum(1)
        idx = d2.argmin(1)
        return idx.view(ze.shape[:-1]), cb[idx].view_as(ze)

    def snap_code(self, z: Tensor) -> Tensor:
        """Each position's nearest codebook vector: (B, latent_dim) -> (B, latent_dim)."""
        return self.quantise(z.view(len(z), self.positions, self.params.code_dim))[1].flatten(1)

    def code_indices(self, x: Tensor) -> Tensor:
        return self.quantise(self._vectors(x))[0]

    def code_symbols(self, x: Tensor) -> tuple[Tensor, int]:
        return self.code_indices(x), self.params.num_codes

    def encode_with_symbols(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, int]]:
        idx, zq = self.quantise(self._vectors(x))
        return zq.flatten(1), (idx, self.params.num_codes)

    def decode_symbols(self, symbols: Tensor) -> Tensor:
        return self.decode(self.codebook[symbols].flatten(1))

    # eager even inside a compiled loss: inductor (torch 2.14, CPU) gets ``add_(a @ b, alpha=c)``
    # wrong (the codebook drifted by up to 6.5 after one step against eager)
    @numerics.eager
    @torch.no_grad()
    def _ema_update(self, ze: Tensor, idx: Tensor) -> None:
        """The codebook's moving averages, in float32 under bf16 autocast too (like optimiser state)."""
        k, decay, eps = self.params.num_codes, self.params.ema_decay, 1e-5
        flat = ze.detach().float().reshape(-1, ze.shape[-1])
        with torch.autocast(ze.device.type, enabled=False):
            onehot = F.one_hot(idx.reshape(-1), k).type_as(flat)  # (B*L, K)
            self.ema_count.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(onehot.T @ flat, alpha=1 - decay)
            n = self.ema_count.sum()
            count = (self.ema_count + eps) / (n + k * eps) * n
            self.codebook.copy_(self.ema_sum / count[:, None])

    def encode(self, x):
        return self.quantise(self._vectors(x))[1].flatten(1)

    def loss(self, x):
        ze = self._vectors(x)
        idx, zq = self.quantise(ze)
        if self.training:
            self._ema_update(ze, idx)
        z = ze + (zq - ze).detach()  # straight-through: decoder gradients reach the encoder
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z.flatten(1)), x)
        commit = (ze - zq.detach()).pow(2).sum((1, 2)).mean()
        # counts by index_add_, not bincount, which reads its input's maximum back to the host
        flat_idx = idx.flatten()
        ones = torch.ones(flat_idx.shape, device=ze.device)  # float32 counts, whatever ze's dtype
        usage = torch.zeros(self.params.num_codes, device=ze.device).index_add_(0, flat_idx, ones)
        p = usage / usage.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return {
            "loss": rec + self.params.commitment * commit,
            "rec": rec,
            "commit": commit,
            "perplexity": perplexity,
        }

    def sample(self, n, generator=None):
        idx = torch.randint(
            self.params.num_codes, (n, self.positions), generator=generator, device=self.codebook.device
        )
        return self.decode(self.codebook[idx].flatten(1))

    def latent_bits(self) -> float:
        return self.positions * math.log2(self.params.num_codes)

    def importance_samples(self, x, k, generator=None):
        z = self.encode(x)[None]  # (1, B, d): the point posterior at the nearest codes
        # log p(z) - log q(z | x): a uniform prior over K codes at each of L positions, q = 1
        return z, z.new_full((1, len(x)), -self.positions * math.log(self.params.num_codes))

    def likelihood_provenance(self) -> dict[str, Any]:
        return {
            "posterior": "point mass at the nearest codes",
            "prior": f"uniform over the {self.params.num_codes} codes at each of {self.positions} positions",
        }


register(
    "vae-mlp", VAE, "MLP VAE on the source design's widths", backbone="mlp", latent_dim=64, hidden=(128,)
)
register(
    "vae-conv", VAE, "InfoGAN-style conv VAE, latent 64; beta-VAE via beta", backbone="infogan", latent_dim=64
)
register(
    "iwae",
    IWAE,
    "importance-weighted AE on the vae-conv nets, k = 5 samples",
    backbone="infogan",
    latent_dim=64,
)
register(
    "wae-mmd",
    WAE,
    "Wasserstein AE, MMD with the IMQ kernel (mmd_weight 10), vae-conv nets",
    backbone="infogan",
    latent_dim=64,
    recon_loss="mse",
)
register(
    "vq-vae",
    VQVAE,
    "VQ-VAE, K = 256 codes of 4 dims at 16 positions, EMA codebook, commitment 0.25",
    backbone="infogan",
    latent_dim=64,
    recon_loss="mse",
)
