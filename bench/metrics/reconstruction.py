"""Reconstruction and compression metrics on the test split (pixels in [0, 1]).

Reconstructions of models with a rate are decoded from their bitstreams (``EvalContext.coded``),
so distortion and rate describe the same stored bits.
"""

from __future__ import annotations

import math

import torch

from bench.metrics.base import RECONSTRUCTING_FAMILIES, EvalContext, Result, register_metric
from bench.models.vae import gaussian_kl

SSIM_VALUES = 1 << 17  # pixel values per SSIM call (2^16: 0.22 s, 2^18: 0.14 s in the measurement below)


@register_metric(
    "recon_mse",
    uses=("reconstruct",),
    higher_is_better=False,
    families=RECONSTRUCTING_FAMILIES,
    description="mean per-pixel squared error of test reconstructions, pixels in [0, 1]",
)
def recon_mse(ctx: EvalContext) -> Result:
    mse = torch.mean((ctx.reconstructions.double() - ctx.test_images.double()) ** 2).item()
    return Result(mse, ctx.recon_provenance)


@register_metric(
    "psnr",
    uses=("reconstruct",),
    higher_is_better=True,
    families=RECONSTRUCTING_FAMILIES,
    description="mean over test images of per-image PSNR (dB, data range 1), torchmetrics",
)
def psnr(ctx: EvalContext) -> Result:
    from torchmetrics.functional.image import peak_signal_noise_ratio  # imported when first used

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
    families=RECONSTRUCTING_FAMILIES,
    description="mean SSIM of test reconstructions (Gaussian window 11, sigma 1.5), torchmetrics",
)
def ssim(ctx: EvalContext) -> Result:
    from torchmetrics.functional.image import structural_similarity_index_measure

    rec, ref = ctx.reconstructions, ctx.test_images
    n, c, h, w = ref.shape
    # torchmetrics computes SSIM channel by channel (a depthwise Gaussian window, the same
    # constants) and an image's value is the mean of its map over channels and pixels. So a run
    # of images laid side by side as the channels of one image gives the mean of their values,
    # and each call takes about SSIM_VALUES pixel values that way: its depthwise convolution runs
    # over many channels at once, where one channel at a time ran several times slower (10,000
    # 28x28 images: 0.16 s against 0.6 s on a 2-core Intel Xeon with AMX)
    run = max(1, SSIM_VALUES // ref[0].numel())
    total = torch.zeros((), dtype=torch.float64, device=ref.device)  # summed where the images are
    for i in range(0, n, run):
        m = len(ref[i : i + run])
        value = structural_similarity_index_measure(
            rec[i : i + m].reshape(1, m * c, h, w), ref[i : i + m].reshape(1, m * c, h, w), data_range=1.0
        )
        total += value.double() * m
    return Result((total / n).item(), {**ctx.recon_provenance, "impl": "torchmetrics"})


def _rate_provenance(ctx: EvalContext) -> dict:
    coded = ctx.coded
    return {
        **ctx.test_provenance,
        **coded.provenance,
        "total_bits": coded.total_bits,
        "header_bits": coded.header_bits,
        "pixels_per_image": math.prod(ctx.data.image_shape[1:]),
    }


@register_metric(
    "bpp",
    higher_is_better=False,
    families=RECONSTRUCTING_FAMILIES,
    description="bits per pixel of the test images' actual bitstreams (headers counted; float codes "
    "through eval.code_step; n/a for float codes without one)",
)
def bpp(ctx: EvalContext) -> Result | None:
    if ctx.coded is None:
        return None
    n, (_, h, w) = len(ctx.test_uint8), ctx.data.image_shape
    return Result(ctx.coded.total_bits / (n * h * w), _rate_provenance(ctx))


@register_metric(
    "compression_ratio",
    uses=("encode", "latent_bits"),
    higher_is_better=True,
    families=RECONSTRUCTING_FAMILIES,
    description="size of the test images as 8-bit raw pixels over the size of their actual bitstreams "
    "(headers counted; n/a for float codes without eval.code_step)",
)
def compression_ratio(ctx: EvalContext) -> Result | None:
    if ctx.coded is None:
        return None
    raw_bits = len(ctx.test_uint8) * math.prod(ctx.data.image_shape) * 8
    total = ctx.coded.total_bits  # 0 for a constant code: every image decodes from no bits at all
    ratio = raw_bits / total if total else math.inf
    return Result(ratio, {**_rate_provenance(ctx), "raw_bits": raw_bits})


@register_metric(
    "rate_kl_bits",
    higher_is_better=False,
    families=("vae",),
    needs=("posterior",),
    description="bits-back rate: mean over test images of KL(q(z|x) || p(z)) in bits per image",
)
def rate_kl_bits(ctx: EvalContext) -> Result:
    bs, x = ctx.cfg.batch_size, ctx.test_images
    with torch.inference_mode():
        kl = torch.cat([gaussian_kl(*ctx.model.posterior(x[i : i + bs])) for i in range(0, len(x), bs)])
    bits = kl.double() / math.log(2)
    (_, h, w) = ctx.data.image_shape
    prov = {**ctx.test_provenance, "prior": "N(0, I)", "units": "bits per image", "per": "image"}
    return Result(bits.mean().item(), prov, extra={"rate_kl_bpp": bits.mean().item() / (h * w)})

