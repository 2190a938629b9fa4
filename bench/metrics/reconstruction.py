"""Reconstruction and compression metrics on the test split (pixels in [0, 1])."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from bench.metrics.base import EvalContext, Result, register_metric

ENCODER_FAMILIES = ("ae", "vae")


@register_metric(
    "recon_mse",
    uses=("reconstruct",),
    higher_is_better=False,
    families=ENCODER_FAMILIES,
    description="mean per-pixel squared error of test reconstructions, pixels in [0, 1]",
)
def recon_mse(ctx: EvalContext) -> Result:
    mse = torch.mean((ctx.reconstructions.double() - ctx.test_images.double()) ** 2).item()
    return Result(mse, ctx.recon_provenance)


@register_metric(
    "psnr",
    uses=("reconstruct",),
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    description="mean over test images of per-image PSNR (dB, data range 1), torchmetrics",
)
def psnr(ctx: EvalContext) -> Result:
    per_image = peak_signal_noise_ratio(
        ctx.reconstructions, ctx.test_images, data_range=1.0, dim=(1, 2, 3), reduction="none"
    )
    return Result(
        per_image.double().mean().item(), {**ctx.recon_provenance, "impl": "torchmetrics", "per": "image"}
    )


@register_metric(
    "ssim",
    uses=("reconstruct",),
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    description="mean SSIM of test reconstructions (Gaussian window 11, sigma 1.5), torchmetrics",
)
def ssim(ctx: EvalContext) -> Result:
    bs = ctx.cfg.batch_size
    rec, ref = ctx.reconstructions, ctx.test_images
    per_image = torch.cat(
        [
            structural_similarity_index_measure(
                rec[i : i + bs], ref[i : i + bs], data_range=1.0, reduction="none"
            )
            for i in range(0, len(ref), bs)
        ]
    )
    return Result(per_image.double().mean().item(), {**ctx.recon_provenance, "impl": "torchmetrics"})


@register_metric(
    "compression_ratio",
    uses=("encode", "latent_bits"),
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    description="bits of an 8-bit input image over bits of its code (float codes: 32 bits each)",
)
def compression_ratio(ctx: EvalContext) -> Result:
    bits_in = math.prod(ctx.data.image_shape) * 8
    bits_code = ctx.model.latent_bits()
    return Result(bits_in / bits_code, {"input_bits": bits_in, "code_bits": bits_code})
