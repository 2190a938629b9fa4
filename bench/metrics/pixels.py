"""How images reach torch-fidelity's feature extractors: uint8, grayscale tiled to 3 channels.

The one place where bench's float [0, 1] or uint8 (C, H, W) images are converted for them
(``bench.metrics.features`` and ``bench.metrics.fidelity`` both feed extractors through it).
"""

from __future__ import annotations

import math

import torch

GREY_TILED = "uint8, grayscale tiled to 3 channels"
NOISE = "normal"  # the torch-fidelity noise source every sampler draws from


# how far outside [0, 1] a model's float images may stray (the rounding of a sigmoid or a resize)
RANGE_TOLERANCE = 1e-3


def unit_images(x: torch.Tensor, what: str) -> torch.Tensor:
    """A model's float images (``what`` made them) clamped onto [0, 1], after checking that they
    are images in [0, 1]: finite and within ``RANGE_TOLERANCE`` of it. Clamping alone would score
    a tanh output in [-1, 1], or one in [0, 255], as other images than the model makes, and NaN as
    black. uint8 images pass through."""
    if x.dtype == torch.uint8 or x.numel() == 0:
        return x
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # NaN propagates: caught below
    if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{what} returned NaN or infinite values; expected images in [0, 1]")
        raise ValueError(
            f"{what} returned values in [{lo:.4g}, {hi:.4g}]; expected images in [0, 1] "
            "(float) or uint8 (a tanh output maps onto [0, 1] with (x + 1) / 2)"
        )
    return x.clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounded), as real images are stored; uint8 passes through."""
    return x if x.dtype == torch.uint8 else x.clamp(0, 1).mul(255).round().to(torch.uint8)


def pad_images(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, side, side): a zero border around each image, centred (the extra
    pixel of an odd margin goes right and below). Images already ``side`` wide pass unchanged."""
    h, w = x.shape[-2:]
    if h > side or w > side:
        raise ValueError(f"images of {h}x{w} cannot be padded to {side}x{side}")
    top, left = (side - h) // 2, (side - w) // 2
    return torch.nn.functional.pad(x, (left, side - w - left, top, side - h - top))


def to_fidelity_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] or uint8 -> uint8 (B, 3, H, W): what every extractor is fed."""
    x = to_uint8(x)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
