"""Classical image codecs through Pillow: PNG (lossless), JPEG and WebP (lossy, ``quality``).

They are rows of the same tables as the learned models: the same test images, the same
reconstruction and rate metrics. A codec trains nothing (step kind ``none``: the budget does not
apply) and has no generator. Each image is its own file, so headers are part of its bits.
"""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import torch
from pydantic import ConfigDict, Field

from bench.config import Strict
from bench.models.base import GenerativeModel, register


class ImageCodecParams(Strict):
    """A codec has no optimiser; only the lossy codecs have a parameter (``quality``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LossyParams(ImageCodecParams):
    quality: int = Field(75, ge=1, le=100, description="the encoder's quality setting (Pillow, 1-100)")


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [0, 1] -> (B, H, W, C) uint8 (8-bit data round-trips exactly)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class PillowCodec(GenerativeModel):
    """One image per file in ``format``; grey images are coded as grey where the format allows."""

    family = "codec"
    step_kind = "none"
    Params = ImageCodecParams
    capabilities = frozenset({"bitstream"})
    can_sample = False
    format: ClassVar[str]
    lossless: ClassVar[bool] = False

    def save_options(self) -> dict:
        return {}

    def compress(self, x: torch.Tensor) -> list[bytes]:
        from PIL import Image

        out = []
        for img in to_uint8_images(x):
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            buf = io.BytesIO()
            pil.save(buf, format=self.format, **self.save_options())
            out.append(buf.getvalue())
        return out

    def decompress(self, strings: list[bytes]) -> torch.Tensor:
        from PIL import Image

        c = self.image_shape[0]
        mode = "L" if c == 1 else "RGB"
        imgs = [np.asarray(Image.open(io.BytesIO(s)).convert(mode)) for s in strings]
        arr = torch.from_numpy(np.stack(imgs)).reshape(len(imgs), *self.image_shape[1:], c)
        return arr.permute(0, 3, 1, 2).float().div(255)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decompress(self.compress(x)).to(x.device)


class PNG(PillowCodec):
    format = "PNG"
    lossless = True

    def save_options(self) -> dict:
        return {"optimize": True}


class JPEG(PillowCodec):
    format = "JPEG"
    Params = LossyParams

    def save_options(self) -> dict:
        return {"quality": self.params.quality, "optimize": True}


class WebP(PillowCodec):
    format = "WEBP"
    Params = LossyParams

    def save_options(self) -> dict:
        return {"quality": self.params.quality, "method": 6}


register("png", PNG, "PNG through Pillow (lossless, optimize): the lossless floor; trains nothing")
register(
    "jpeg", JPEG, "baseline JPEG through Pillow (optimised Huffman tables), quality 1-100; trains nothing"
)
register("webp", WebP, "lossy WebP through Pillow (method 6), quality 1-100; trains nothing")
