"""Deterministic autoencoders: the plain AE and the variants whose objective differs (DAE, RAE,
sparse AE). Every variant runs on the same shared backbones; only the loss changes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from bench.config import HASH_NEUTRAL
from bench.models.base import GenerativeModel, ModelParams, Widths, register, widths_field
from bench.models.nets import Backbone, make_backbone

Tensor = torch.Tensor
MLP_HIDDEN = (128,)  # the source design's hidden width


class CodecParams(ModelParams):
    """What every encoder-decoder model shares: the backbone, the code size, the likelihood."""

    backbone: Backbone = Field("mlp", description="shared nets: mlp | infogan | ghosh | dcgan")
    latent_dim: int = Field(64, ge=1, le=4096)
    hidden: Widths | None = widths_field(
        "MLP encoder widths, the decoder mirrors them (mlp backbone only; default 128)"
    )
    recon_loss: Literal["mse", "bce"] = Field(
        "mse", description="mse: Gaussian decoder (variance 1/2); bce: Bernoulli decoder"
    )


    @model_validator(mode="after")
    def _hidden_is_mlp_only(self):
        if self.hidden is not None and self.backbone != "mlp":
            raise ValueError(f"hidden sets MLP widths; the {self.backbone!r} backbone has fixed widths")
        return self


def build_codec(params: CodecParams, image_shape, enc_out: int) -> tuple[nn.Module, nn.Module]:
    """Encoder (image -> enc_out values) and decoder (latent_dim -> image) on the chosen backbone."""
    hidden = params.hidden or MLP_HIDDEN
    bb = make_backbone(params.backbone, enc_hidden=hidden, dec_hidden=hidden[::-1])
    return bb.encoder(image_shape, enc_out), bb.decoder(image_shape, params.latent_dim)


def decoder_nll(kind: str, recon: Tensor, x: Tensor) -> Tensor:
    """-log p(x | z) in nats per image, (B, C, H, W) -> (B,).

    ``bce``: Bernoulli decoder with mean ``recon`` (the cross-entropy, for grey levels in [0, 1]).
    ``mse``: Gaussian decoder with mean ``recon`` and variance 1/2 per pixel, whose negative
    log-likelihood is the summed squared error plus D/2 log(pi): the loss ``mse`` trains.
    """
    if kind == "bce":
        return F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(1)
    d = x[0].numel()
    return (recon - x).pow(2).flatten(1).sum(1) + 0.5 * d * math.log(math.pi)


def reconstruction_loss(kind: str, recon: Tensor, x: Tensor) -> Tensor:
    """Per-image loss summed over pixels, averaged over the batch: (B, C, H, W) -> ()."""
    if kind == "bce":
        return F.binary_cross_entropy(recon, x, reduction="sum") / x.shape[0]
    return F.mse_loss(recon, x, reduction="sum") / x.shape[0]


class Autoencoder(GenerativeModel):
    """Shared plumbing of the encoder-decoder families: an encoder that outputs
    ``enc_factor * latent_dim`` values and a decoder from ``latent_dim``, both on the backbone the
    parameters name. Subclasses add the code (deterministic, Gaussian, quantised) and the loss.
    """

    step_kind = "reconstruction"
    enc_factor = 1

    def __init__(self, params: CodecParams, image_shape):
        super().__init__(params, image_shape)
        self.encoder, self.decoder = build_codec(params, image_shape, self.enc_factor * params.latent_dim)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def latent_bits(self) -> float:
        return float(self.params.latent_dim * 32)  # float32 codes


class AEParams(CodecParams):
    code_activation: Literal["none", "relu"] = "none"
    latent_bits: int | None = Field(
        None,
        ge=1,
        le=16,
        description="quantise each code value to 2**latent_bits levels before decoding (None: float32)",
    )
    prior_mean: Literal["fitted", "zero"] = Field(
        "fitted",
        description="mean of the Gaussian fitted to the training codes for sampling: their mean, or zero "
        "(the released code of Ghosh et al. 2020); its covariance is the codes' either way",
        json_schema_extra=HASH_NEUTRAL,
    )


class AE(Autoencoder):
    """Autoencoder: encoder -> code -> decoder, trained on reconstruction alone.

    With ``latent_bits = b`` the code is bounded by tanh (to (-1, 1), or [0, 1) after a ReLU) and
    rounded to 2**b uniform levels before decoding, with a straight-through gradient in training;
    ``encode`` returns the quantised code, so reconstructions, probes and the compression ratio
    all see exactly what would be stored.

    Samples come from a full-covariance Gaussian fitted to the training codes after training
    (``fit_latent_prior``), the "N" sampler of Ghosh et al. 2020; before fitting, from N(0, I).
    """

    family = "ae"
    Params = AEParams

    def __init__(self, params: AEParams, image_shape):
        super().__init__(params, image_shape)
        d = params.latent_dim
        self.register_buffer("prior_mean", torch.zeros(d))
        self.register_buffer("prior_chol", torch.eye(d))

    # ---- the code and its quantiser
    @property
    def _code_low(self) -> float:
        return 0.0 if self.params.code_activation == "relu" else -1.0

    def _to_grid(self, t: Tensor) -> Tensor:
        """Round values in [low, 1] to the 2**b-level grid (straight-through gradient)."""
        lo, levels = self._code_low, 2**self.params.latent_bits - 1
        q = lo + torch.round((t - lo) / (1 - lo) * levels) / levels * (1 - lo)
        return t + (q - t).detach()

    def _bounded(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        if self.params.code_activation == "relu":
            z = F.relu(z)
        return torch.tanh(z) if self.params.latent_bits is not None else z

    def encode(self, x):
        z = self._bounded(x)
        return self._to_grid(z) if self.params.latent_bits is not None else z

    def code_symbols(self, x: Tensor) -> tuple[Tensor, int] | None:
        """The grid level of each code value, in [0, 2**latent_bits); None for float codes."""
        return self.encode_with_symbols(x)[1] if self.params.latent_bits is not None else None

    def encode_with_symbols(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, int] | None]:
        b = self.params.latent_bits
        if b is None:  # float codes, or a subclass's own quantiser (ae-factorized): its encode
            return self.encode(x), None
        z = self._bounded(x)
        lo, levels = self._code_low, 2**b - 1
        symbols = torch.round((z - lo) / (1 - lo) * levels).long().clamp_(0, levels)
        return self._to_grid(z), (symbols, levels + 1)

    def decode_symbols(self, symbols: Tensor) -> Tensor:
        if self.params.latent_bits is None:
            return super().decode_symbols(symbols)
        lo, levels = self._code_low, 2**self.params.latent_bits - 1
        return self.decode(lo + symbols.float() / levels * (1 - lo))

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        rec = reconstruction_loss(self.params.recon_loss, self.reconstruct(x), x)
        return {"loss": rec}

    # ---- sampling
    @torch.no_grad()
    def fit_latent_prior(self, codes: Tensor) -> None:
        """Fit the sampling Gaussian to codes (N, d) of the training set (mean zero with
        ``prior_mean: zero``; the covariance is about the codes' own mean either way)."""
        codes = codes.double()
        mean = codes.mean(0) if self.params.prior_mean == "fitted" else torch.zeros_like(codes[0])
        # one code has no spread: the sampler then draws about it (no division by n - 1 = 0)
        spread = torch.cov(codes.T, correction=1 if len(codes) > 1 else 0).reshape(codes.shape[1], -1)
        cov = spread + 1e-6 * torch.eye(codes.shape[1], dtype=codes.dtype, device=codes.device)
        self.prior_mean.copy_(mean.float())
        self.prior_chol.copy_(torch.linalg.cholesky(cov).float())

    def snap_code(self, z: Tensor) -> Tensor:
        """Only grid points can be stored, so only they are decoded: z clamped and rounded."""
        if self.params.latent_bits is None:
            return z
        return self._to_grid(z.clamp(self._code_low, 1.0))

    def sample(self, n, generator=None):
        eps = torch.randn(n, self.params.latent_dim, generator=generator, device=self.prior_mean.device)
        return self.decode(self.snap_code(self.prior_mean + eps @ self.prior_chol.T))

    def latent_bits(self) -> float:
        return float(self.params.latent_dim * (self.params.latent_bits or 32))


# --------------------------------------------------------------------------- variants


class DAEParams(AEParams):
    corruption: Literal["gaussian", "mask"] = "gaussian"
    noise: float = Field(
        0.3, gt=0, le=10, description="Gaussian sigma (gaussian) or the probability of zeroing a pixel (mask)"
    )

    @model_validator(mode="after")
    def _mask_probability(self):
        if self.corruption == "mask" and self.noise >= 1:
            raise ValueError(f"noise: a masking probability must be below 1 (got {self.noise})")
        return self


def corrupt(x: Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise of std ``level`` clipped to [0, 1], or each pixel zeroed with probability ``level``."""
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * noise).clamp(0, 1)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= level
    return x * keep


class DAE(AE):
    """Denoising autoencoder (Vincent et al. 2008): reconstruct the clean image from a corrupted one."""

    Params = DAEParams

    def loss(self, x):
        noisy = corrupt(x, self.params.corruption, self.params.noise)
        rec = reconstruction_loss(self.params.recon_loss, self.decode(self.encode(noisy)), x)
        return {"loss": rec}


class RAEParams(AEParams):
    latent_l2: float = Field(0.0128, ge=0, description="weight of the code penalty 1/2 ||z||^2 per image")
    decoder_weight_decay: float = Field(
        2.048e-4, ge=0, description="L2 weight decay on the decoder's weight matrices and kernels (Adam)"
    )


class RAE(AE):
    """Regularised deterministic autoencoder (Ghosh et al. 2020, RAE-L2): reconstruction plus an L2
    penalty on the codes, with weight decay on the decoder as its smoothness regulariser.

    The defaults are Ghosh et al.'s MNIST RAE-L2 weights converted to this loss's scale (summed
    pixel error): see suites/paper-ghosh.yaml for the conversion.
    """

    Params = RAEParams

    def loss(self, x):
        z = self.encode(x)
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z), x)
        z_l2 = 0.5 * z.pow(2).sum(1).mean()
        return {"loss": rec + self.params.latent_l2 * z_l2, "rec": rec, "z_l2": z_l2}

    def optimizer_groups(self) -> list[dict[str, Any]]:
        decayed = [p for p in self.decoder.parameters() if p.dim() > 1]  # weights, not biases or BN
        ids = {id(p) for p in decayed}
        rest = [p for p in self.parameters() if id(p) not in ids]
        wd = self.params.weight_decay + self.params.decoder_weight_decay
        return [{"params": rest}, {"params": decayed, "weight_decay": wd}]


class SparseAEParams(AEParams):
    code_activation: Literal["none", "relu"] = "relu"
    l1: float = Field(0.05, ge=0, description="weight of the L1 penalty ||z||_1 per image on the code")


class SparseAE(AE):
    """Sparse autoencoder: reconstruction plus an L1 penalty on the code's activations (ReLU codes,
    so most units are exactly zero for a given image)."""

    Params = SparseAEParams

    def loss(self, x):
        z = self.encode(x)
        rec = reconstruction_loss(self.params.recon_loss, self.decode(z), x)
        l1 = z.abs().sum(1).mean()
        return {"loss": rec + self.params.l1 * l1, "rec": rec, "l1": l1}


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
    "InfoGAN-style conv encoder/decoder (Lucic et al. 2018 nets), latent 64",
    backbone="infogan",
    latent_dim=64,
)
register(
    "dae",
    DAE,
    "denoising AE on the ae-conv nets: trained on corrupted inputs (gaussian sigma | mask prob: noise)",
    backbone="infogan",
    latent_dim=64,
)
register(
    "rae",
    RAE,
    "regularised AE (Ghosh et al. 2020, RAE-L2): L2 on codes + decoder weight decay, ae-conv nets",
    backbone="infogan",
    latent_dim=64,
)
register(
    "sparse-ae",
    SparseAE,
    "sparse AE on the ae-conv nets: ReLU code with an L1 penalty (l1)",
    backbone="infogan",
    latent_dim=64,
)
