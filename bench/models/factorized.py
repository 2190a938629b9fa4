"""The factorized-prior autoencoder of Ballé et al. 2017: a learned compression model.

The code passes through compressai's ``EntropyBottleneck`` (a learned non-parametric density per
code channel): training adds uniform noise and minimises distortion + lmbda * rate, the rate
being -log2 of the bottleneck's likelihoods; at evaluation the code is rounded and
compressai's rANS coder writes one bitstream per image (``compress``).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from bench.models.ae import AE, AEParams, reconstruction_loss
from bench.models.base import register

Tensor = torch.Tensor
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


class FactorizedParams(AEParams):
    lmbda: float = Field(0.05, gt=0, le=1e4, description="weight of the rate (bits per image) in the loss")

    @model_validator(mode="after")
    def _own_quantiser(self):
        if self.latent_bits is not None:
            raise ValueError(
                "ae-factorized quantises through its entropy bottleneck: latent_bits does not apply"
            )
        if self.recon_loss != "mse":
            raise ValueError("ae-factorized's distortion is the squared error: recon_loss must be mse")
        return self


class FactorizedPriorAE(AE):
    """Encoder -> EntropyBottleneck (rounding around its medians) -> decoder, trained on
    summed squared error + lmbda * bits per image (+ the bottleneck's auxiliary quantile loss)."""

    Params = FactorizedParams
    capabilities = frozenset({"bitstream"})

    def __init__(self, params: FactorizedParams, image_shape):
        super().__init__(params, image_shape)
        from compressai.entropy_models import EntropyBottleneck

        self.entropy_bottleneck = EntropyBottleneck(params.latent_dim)

    def _as_map(self, y: Tensor) -> Tensor:
        return y.reshape(len(y), -1, 1, 1)  # (B, d) -> the (B, C, H, W) layout compressai codes

    def encode(self, x):
        """The rounded code (what ``compress`` stores), as values."""
        y = self._as_map(self._bounded(x))
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        return self.entropy_bottleneck.quantize(y, "dequantize", medians).flatten(1)

    def loss(self, x):
        y = self._as_map(self._bounded(x))
        y_tilde, likelihoods = self.entropy_bottleneck(y, training=True)
        rec = reconstruction_loss("mse", self.decode(y_tilde.flatten(1)), x)
        bits = -torch.log2(likelihoods).flatten(1).sum(1).mean()
        aux = self.entropy_bottleneck.loss()
        return {"loss": rec + self.params.lmbda * bits + aux, "rec": rec, "bits": bits, "aux": aux}

    def compress(self, x: Tensor) -> list[bytes]:
        self.entropy_bottleneck.update(force=True)  # the CDF tables of the current weights
        return self.entropy_bottleneck.compress(self._as_map(self._bounded(x)))

    def decompress(self, strings: list[bytes]) -> Tensor:
        y_hat = self.entropy_bottleneck.decompress(strings, (1, 1))
        return self.decode(y_hat.flatten(1).to(next(self.parameters()).device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the CDF tables are sized by ``update``: give the buffers the stored sizes before loading
        eb = f"{prefix}entropy_bottleneck."
        for name in CDF_BUFFERS:
            if eb + name in state_dict:
                getattr(self.entropy_bottleneck, name).resize_(state_dict[eb + name].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


register(
    "ae-factorized",
    FactorizedPriorAE,
    "factorized-prior AE (Ballé et al. 2017, compressai EntropyBottleneck) on the ae-conv nets; "
    "distortion + lmbda * rate",
    backbone="infogan",
    latent_dim=64,
)
