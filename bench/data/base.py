"""The in-memory image dataset every stage shares, and how training batches are cut from it.

Training batches are cut from the in-memory tensors by index (no per-sample PIL / DataLoader
path); a batch for step ``s`` is a pure function of (seed, s), which makes resuming exact.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace

import torch


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_problem(n: int, shape: tuple[int, int, int], bytes_per_value: float = 1.0) -> str | None:
    """Why ``n`` images of ``shape`` (C, H, W) cannot be held here, at ``bytes_per_value`` per pixel
    value (what making them takes at its peak), else None: said before the allocation that would
    fail, or wake the kernel's out-of-memory killer."""
    c, h, w = shape
    need, have = n * c * h * w * bytes_per_value, available_memory()
    if have is None or need <= have:
        return None

    def size(b: float) -> str:
        return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"

    return (
        f"{n:,} images of {c}x{h}x{w} need about {size(need)} of memory to make; this machine has "
        f"{size(have)} available"
    )


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
    # dynamic binarisation (``binarized``): every split is stored as one fixed draw of {0, 255}
    # pixels, and training batches draw afresh from the grey levels kept in ``train_levels``
    binarized: bool = False
    train_levels: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        """Whether the images carry class labels a classifier can learn: two classes or more (a
        folder of one class has nothing to tell apart: a suite asking for its label metrics is
        refused, bench.evaluate leaves them n/a)."""
        return self.num_classes >= 2

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
            train_levels=None if self.train_levels is None else self.train_levels.to(device),
        )

    def train_batch(self, idx: torch.Tensor, step: int, seed: int) -> torch.Tensor:
        """The training images ``idx`` as float (B, C, H, W) in [0, 1]; binarised data draws each
        pixel from Bernoulli(grey level) with a generator of (seed, step), so resuming is exact."""
        if self.train_levels is None:
            return to_float(self.train_x[idx])
        g = torch.Generator(device=idx.device).manual_seed((seed * 1_000_003 + step) % 2**63)
        return torch.bernoulli(to_float(self.train_levels[idx]), generator=g)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; the one place pixels are scaled."""
    return x.float().div_(255.0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training batches per epoch: every image once, the last batch short, except that a last
    batch of a single image is dropped (batch norm cannot train on one image; it is a different
    image each epoch)."""
    if n > 1 and batch_size > 1 and n % batch_size == 1:
        return n // batch_size
    return -(-n // batch_size)


def batch_indices(n: int, batch_size: int, step: int, seed: int, device: torch.device) -> torch.Tensor:
    """Indices of the training batch for global step ``step``.

    Each epoch is a fresh permutation drawn from (seed, epoch); the last batch of an epoch may
    be short, so an epoch covers every image exactly once (``steps_per_epoch``: but for a last
    batch of one image, which is dropped).
    """
    per_epoch = steps_per_epoch(n, batch_size)
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


BINARIZE_SEEDS = {"train": 1, "test": 2}  # the fixed draws every evaluation of binarised data sees


def binarized(data: ImageData) -> ImageData:
    """Dynamically binarised data (Burda et al. 2016, as pythae): the splits as one fixed Bernoulli
    draw of each pixel's grey level (what evaluation sees), training batches drawn afresh from
    the grey levels at every step. Its checksum is the grey-level data's, marked binarised."""
    if data.binarized:
        return data
    full = data.complete

    def draw(x: torch.Tensor, split: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(BINARIZE_SEEDS[split])
        return torch.bernoulli(to_float(x.cpu()), generator=g).to(torch.uint8).mul_(255).to(x.device)

    checksum = hashlib.sha256(f"{full.checksum}:binarized:{BINARIZE_SEEDS}".encode()).hexdigest()[:16]
    source = f"{full.source}; binarised (each pixel ~ Bernoulli(grey level), fixed draws for evaluation)"
    b = replace(
        full,
        train_x=draw(full.train_x, "train"),
        test_x=draw(full.test_x, "test"),
        checksum=checksum,
        source=source,
        full=None,
        binarized=True,
        train_levels=full.train_x,
    )
    if data.full is None:
        return b
    n_train, n_test = len(data.train_x), len(data.test_x)
    return replace(
        b,
        full=b,
        train_x=b.train_x[:n_train],
        train_y=b.train_y[:n_train],
        train_levels=b.train_levels[:n_train],
        test_x=b.test_x[:n_test],
        test_y=b.test_y[:n_test],
    )
