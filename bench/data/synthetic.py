"""Generated data: small, deterministic, offline; the data of the tests and the smoke suite."""

from __future__ import annotations

import torch

from bench.data.base import ImageData, make_image_data


def make_synthetic(n_train: int = 2048, n_test: int = 512, size: int = 28, seed: int = 1234) -> ImageData:
    """Ten classes of blurred bars and blobs on a 28x28 canvas, with position jitter and noise.

    Small, deterministic, and structured enough that autoencoders learn it in a few hundred
    steps and a linear probe separates the classes: the data of the tests and the smoke suite.
    """
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        coords = torch.arange(size, dtype=torch.float32)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
        # class k: a blob centred on a 3x3 grid position (k < 9) or a horizontal bar (k == 9)
        cy = torch.tensor([7.0, 7, 7, 14, 14, 14, 21, 21, 21, 14])[y]
        cx = torch.tensor([7.0, 14, 21, 7, 14, 21, 7, 14, 21, 14])[y]
        cy = cy + torch.randn(n, generator=g) * 1.0
        cx = cx + torch.randn(n, generator=g) * 1.0
        sig = 2.5 + torch.rand(n, generator=g)
        sx = torch.where(y == 9, torch.full_like(sig, 9.0), sig)
        img = torch.exp(
            -((yy - cy[:, None, None]) ** 2) / (2 * sig[:, None, None] ** 2)
            - ((xx - cx[:, None, None]) ** 2) / (2 * sx[:, None, None] ** 2)
        )
        img = img + 0.05 * torch.randn(img.shape, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return make_image_data(
        "synthetic", train_x, train_y, test_x, test_y, 10, source=f"generated (seed {seed})"
    )
