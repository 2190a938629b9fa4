"""Sample and reconstruction grids: the final artifacts and the step-indexed images of the MLflow UI.

Both come from the same two functions, so the grid logged at the last evaluation is the run's
``samples.png``. Samples are drawn from a generator seeded by the run seed alone: every model of
a family with the same latent shape decodes the same latent draws, at every evaluation, so the
grids compare models (and steps) on equal inputs. Reconstructions are of the first test images,
the same for every model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bench.run.hooks import RunContext, SuiteHooks

if TYPE_CHECKING:
    import numpy as np

    from bench.data import ImageData
    from bench.models import GenerativeModel

N_SAMPLES = 64  # an 8 x 8 grid
N_RECONSTRUCTIONS = 32  # 32 originals and their reconstructions, interleaved: 8 x 8


def image_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (H', W', 3) uint8 numpy grid, for MLflow images."""
    from torchvision.utils import make_grid

    grid = make_grid(images[: nrow * nrow].float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def sample_grid(model: GenerativeModel, seed: int, device: torch.device) -> np.ndarray:
    """64 samples from latent draws that depend on ``seed`` only (not on the model or the step)."""
    g = torch.Generator(device=device).manual_seed(seed + 2)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return image_grid(model.sample(N_SAMPLES, g))
    finally:
        model.train(was_training)


def reconstruction_grid(model: GenerativeModel, data: ImageData, device: torch.device) -> np.ndarray:
    """The first 32 test images, each followed by its reconstruction."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = data.test_x[:N_RECONSTRUCTIONS].float().div(255).to(device)
            rec = model.reconstruct(x).clamp(0, 1)
            pairs = torch.stack([x, rec], 1).flatten(0, 1)  # (2N, C, H, W): original, reconstruction, ...
            return image_grid(pairs, nrow=8)
    finally:
        model.train(was_training)


class StepImages(SuiteHooks):
    """At each evaluation, log the sample grid (every model) and the reconstruction grid (ae/vae)
    as step-indexed MLflow images (keys ``samples`` and ``reconstructions``)."""

    def __init__(self) -> None:
        self.ctx: RunContext | None = None

    def run_started(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def evaluated(self, step: int, results) -> None:
        c = self.ctx
        if c is None:
            return
        if c.model.can_sample:
            c.run.image("", sample_grid(c.model, c.spec.seed, c.device), key="samples", step=step)
        if c.model.reconstructs:
            c.run.image("", reconstruction_grid(c.model, c.data, c.device), key="reconstructions", step=step)
