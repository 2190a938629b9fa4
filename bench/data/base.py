"""The in-memory image dataset every stage shares, and how training batches are cut from it.

Training batches are cut from the in-memory tensors by index (no per-sample PIL / DataLoader
path); a batch for step ``s`` is a pure function of (seed, s), which makes resuming exact.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace

import torch


class DataError(RuntimeError):
    """A dataset could not be found, read or verified. The message names the file."""


@dataclass(frozen=True)
class ImageData:
    """Both splits of an image dataset, resident in memory (CPU or GPU)."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64; -1 where the dataset has no labels
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    num_classes: int  # 0: no labels (probe, kNN and domain-classifier metrics are n/a)
    checksum: str  # sha256 of the decoded arrays: the content key for every cache
    source: str  # where the files came from and how they were converted (provenance)
    # the complete dataset when this is a prefix of it (``train_size``/``test_size``): the
    # reference set of the generation metrics is cut from it, so a subset keeps its checksum
    full: ImageData | None = field(default=None, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    @property
    def complete(self) -> ImageData:
        return self.full if self.full is not None else self

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ImageData:
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; the one place pixels are scaled."""
    return x.float().div_(255.0)


def batch_indices(n: int, batch_size: int, step: int, seed: int, device: torch.device) -> torch.Tensor:
    """Indices of the training batch for global step ``step``.

    Each epoch is a fresh permutation drawn from (seed, epoch); the last batch of an epoch may
    be short, so an epoch covers every image exactly once.
    """
    per_epoch = -(-n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = _epoch_permutation(n, seed, epoch, torch.device(device))
    return perm[k * batch_size : (k + 1) * batch_size]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Drawn on the CPU (the same order on every device), copied to ``device`` once per epoch:
    a step slices it there, with no host-to-device copy."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def make_image_data(name, train_x, train_y, test_x, test_y, num_classes, source) -> ImageData:
    h = hashlib.sha256()
    for t in (train_x, train_y, test_x, test_y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return ImageData(name, train_x, train_y, test_x, test_y, num_classes, h.hexdigest()[:16], source)
