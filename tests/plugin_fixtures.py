"""Files a user brings: a folder of PNG images and a model plugin module, written into a temp dir."""

from __future__ import annotations

import random
from pathlib import Path

TINY_VAE = '''
"""A model written outside bench: a small MLP VAE."""

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.models import GenerativeModel, ModelParams


class TinyParams(ModelParams):
    latent_dim: int = Field(8, ge=1, le=64)
    hidden: int = Field(64, ge=1, le=4096)


class TinyVAE(GenerativeModel):
    """A small MLP VAE from the user's own folder."""

    family = "vae"
    Params = TinyParams

    def __init__(self, params, image_shape):
        super().__init__(params, image_shape)
        d, h, k = math.prod(image_shape), params.hidden, params.latent_dim
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 2 * k))
        self.dec = nn.Sequential(nn.Linear(k, h), nn.ReLU(), nn.Linear(h, d), nn.Sigmoid())

    def encode(self, x):
        return self.enc(x).chunk(2, 1)[0]
{decode}
    def loss(self, x):
        mu, logvar = self.enc(x).chunk(2, 1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy(self.dec(z).view_as(x), x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return {{"loss": rec + kl, "rec": rec, "kl": kl}}

    def sample(self, n, generator=None):
        device = next(self.parameters()).device
        z = torch.randn(n, self.params.latent_dim, generator=generator, device=device)
        return self.dec(z).view(n, *self.image_shape)

    def latent_bits(self):
        return 32.0 * self.params.latent_dim


class NotAModel(nn.Module):
    family = "vae"
'''

DECODE = """
    def decode(self, z):
        return self.dec(z).view(-1, *self.image_shape)
"""


def write_plugin(folder: Path, package: str = "myplugins", with_decode: bool = True) -> Path:
    """``<folder>/<package>/models.py`` defining TinyVAE (and NotAModel); returns the file."""
    pkg = folder / package
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    path = pkg / "models.py"
    path.write_text(TINY_VAE.format(decode=DECODE if with_decode else ""))
    return path


def write_images(
    root: Path, n_train: int = 40, n_test: int = 16, labelled: bool = True, seed: int = 0
) -> Path:
    """``root/{train,test}/{circle,square}/*.png``: 32x32 RGB shapes in random places and colours
    (red-ish circles, blue-ish squares); without ``labelled`` the PNGs sit directly in the splits."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("circle", "square"):
            folder = root / split / cls if labelled else root / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.new("RGB", (32, 32), tuple(rng.randrange(0, 60) for _ in range(3)))
                draw = ImageDraw.Draw(img)
                r = rng.randrange(5, 10)
                cx, cy = rng.randrange(r, 32 - r), rng.randrange(r, 32 - r)
                if cls == "circle":
                    colour = (rng.randrange(180, 256), rng.randrange(0, 120), rng.randrange(0, 80))
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
                else:
                    colour = (rng.randrange(0, 80), rng.randrange(60, 160), rng.randrange(180, 256))
                    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
                img.save(folder / f"{cls}-{i:03d}.png")
    return root
