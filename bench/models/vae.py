"""Variational autoencoders (Gaussian encoder, Bernoulli or Gaussian decoder)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.models.ae import AEParams, reconstruction_loss
from bench.models.base import GenerativeModel, register
from bench.models.nets import make_backbone


class VAEParams(AEParams):
    recon_loss: Literal["mse", "bce"] = "bce"
    beta: float = Field(1.0, ge=0, description="weight of the KL term: beta-VAE when != 1")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample: (B, d) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


class VAE(GenerativeModel):
    """VAE with the reparameterisation trick; ``beta`` weights the KL term."""

    family = "vae"
    step_kind = "reconstruction"
    Params = VAEParams

    def __init__(self, params: VAEParams, image_shape):
        super().__init__(params, image_shape)
        bb = make_backbone(params.backbone, enc_hidden=params.hidden, dec_hidden=params.hidden[::-1])
        self.encoder = bb.encoder(image_shape, 2 * params.latent_dim)  # -> (mu, logvar)
        self.decoder = bb.decoder(image_shape, params.latent_dim)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def encode(self, x):
        return self.posterior(x)[0]

    def decode(self, z):
        return self.decoder(z)

    def loss(self, x):
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z), x)
        kl = gaussian_kl(mu, logvar).mean()
        return {"loss": rec + self.params.beta * kl, "rec": rec, "kl": kl}

    def sample(self, n, generator=None):
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.params.latent_dim, generator=generator, device=device))

    def latent_bits(self) -> int:
        return self.params.latent_dim * 32


register(
    "vae-mlp", VAE, "MLP VAE on the source design's widths", backbone="mlp", latent_dim=64, hidden=(128,)
)
register("vae-conv", VAE, "InfoGAN-style conv VAE; beta-VAE via beta", backbone="infogan", latent_dim=64)
