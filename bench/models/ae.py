"""Deterministic autoencoders."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from bench.models.base import GenerativeModel, ModelParams, register
from bench.models.nets import BACKBONES, make_backbone


class AEParams(ModelParams):
    backbone: str = "mlp"
    latent_dim: int = Field(64, ge=1, le=4096)
    hidden: tuple[int, ...] = Field((128,), description="MLP encoder widths; the decoder mirrors them")
    code_activation: Literal["none", "relu"] = "none"
    recon_loss: Literal["mse", "bce"] = "mse"

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        BACKBONES.get(v)
        return v


def reconstruction_loss(kind: str, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image loss summed over pixels, averaged over the batch: (B, C, H, W) -> ()."""
    if kind == "bce":
        return F.binary_cross_entropy(recon, x, reduction="sum") / x.shape[0]
    return F.mse_loss(recon, x, reduction="sum") / x.shape[0]


class AE(GenerativeModel):
    """Autoencoder: encoder -> code -> decoder, trained on reconstruction alone.

    Samples come from a full-covariance Gaussian fitted to the training codes after training
    (``fit_latent_prior``), the "N" sampler of Ghosh et al. 2020; before fitting, from N(0, I).
    """

    family = "ae"
    step_kind = "reconstruction"
    Params = AEParams

    def __init__(self, params: AEParams, image_shape):
        super().__init__(params, image_shape)
        bb = make_backbone(params.backbone, enc_hidden=params.hidden, dec_hidden=params.hidden[::-1])
        self.encoder = bb.encoder(image_shape, params.latent_dim)
        self.decoder = bb.decoder(image_shape, params.latent_dim)
        d = params.latent_dim
        self.register_buffer("prior_mean", torch.zeros(d))
        self.register_buffer("prior_chol", torch.eye(d))

    def encode(self, x):
        z = self.encoder(x)
        return F.relu(z) if self.params.code_activation == "relu" else z

    def decode(self, z):
        return self.decoder(z)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rec = reconstruction_loss(self.params.recon_loss, self.reconstruct(x), x)
        return {"loss": rec}

    @torch.no_grad()
    def fit_latent_prior(self, codes: torch.Tensor) -> None:
        """Fit the sampling Gaussian to codes (N, d) of the training set."""
        codes = codes.double()
        mean = codes.mean(0)
        cov = torch.cov(codes.T) + 1e-6 * torch.eye(codes.shape[1], dtype=codes.dtype, device=codes.device)
        self.prior_mean.copy_(mean.float())
        self.prior_chol.copy_(torch.linalg.cholesky(cov).float())

    def sample(self, n, generator=None):
        eps = torch.randn(n, self.params.latent_dim, generator=generator, device=self.prior_mean.device)
        return self.decode(self.prior_mean + eps @ self.prior_chol.T)

    def latent_bits(self) -> int:
        return self.params.latent_dim * 32


register(
    "ae-mlp",
    AE,
    "the source design: 784-128-64 MLP, ReLU code",
    backbone="mlp",
    latent_dim=64,
    hidden=(128,),
    code_activation="relu",
)
register(
    "ae-conv",
    AE,
    "InfoGAN-style conv encoder/decoder (Lucic et al. 2018 nets)",
    backbone="infogan",
    latent_dim=64,
)
