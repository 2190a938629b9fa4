"""How images reach torch-fidelity's feature extractors: uint8, grayscale tiled to 3 channels.

The one place where bench's float [0, 1] or uint8 (C, H, W) images are converted for them
(``bench.metrics.features`` and ``bench.metrics.fidelity`` both feed extractors through it).
"""

from __future__ import annotations

import torch

GREY_TILED = "uint8, grayscale tiled to 3 channels"
NOISE = "normal"  # the torch-fidelity noise source every sampler draws from


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounded), as real images are stored; uint8 passes through."""
    return x if x.dtype == torch.uint8 else x.clamp(0, 1).mul(255).round().to(torch.uint8)


def to_fidelity_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] or uint8 -> uint8 (B, 3, H, W): what every extractor is fed."""
    x = to_uint8(x)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
