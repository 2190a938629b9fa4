"""Datasets: a registry of loaders, each returning both splits in memory as uint8.

``load_dataset`` loads a dataset once per process; ``from_config`` does it for a suite's
``dataset`` section. Adding a dataset is one loader and one ``DATASETS.add`` line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

from bench.config import DatasetConfig
from bench.data.base import DataError, ImageData, batch_indices, make_image_data, to_float
from bench.data.idx import FASHION_MNIST, MNIST, IdxDataset, read_idx, write_idx
from bench.data.synthetic import make_synthetic
from bench.registry import Registry

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "DataError",
    "IdxDataset",
    "ImageData",
    "batch_indices",
    "config_problems",
    "from_config",
    "load_dataset",
    "make_image_data",
    "make_synthetic",
    "read_idx",
    "to_float",
    "write_idx",
]

DatasetLoader = Callable[..., ImageData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")

DATASETS.add("mnist", lambda root=None, **_: MNIST.load(root))
DATASETS.add("fashion-mnist", lambda root=None, **_: FASHION_MNIST.load(root))
DATASETS.add(
    "synthetic",
    lambda root=None, train_size=None, test_size=None, **_: make_synthetic(
        train_size or 2048, test_size or 512
    ),
)


# the synthetic data is drawn in one piece (float32 temporaries of 3 kB per image): at most this many
# images per split, about 1.5 GB at the peak on 2 CPU cores' worth of memory
MAX_SYNTHETIC_SIZE = 100_000


def config_problems(cfg: DatasetConfig) -> list[tuple[str, str]]:
    """(field, message) for what a dataset section asks that its dataset cannot do."""
    problems = []
    if cfg.name == "synthetic":
        for key in ("train_size", "test_size"):
            n = getattr(cfg, key)
            if n is not None and n > MAX_SYNTHETIC_SIZE:
                problems.append(
                    (
                        f"dataset.{key}",
                        f"the synthetic dataset makes at most {MAX_SYNTHETIC_SIZE} images (got {n})",
                    )
                )
    return problems


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str | None, train_size: int | None, test_size: int | None) -> ImageData:
    data = DATASETS.get(name)(root=root, train_size=train_size, test_size=test_size)
    if name != "synthetic":
        if train_size:
            data = _subset(data, train_size, None)
        if test_size:
            data = _subset(data, None, test_size)
    return data


def _subset(data: ImageData, n_train: int | None, n_test: int | None) -> ImageData:
    """The first n images of a split: a deterministic, documented subset (it keeps the complete
    dataset's checksum, and the complete dataset itself in ``full``)."""
    data = replace(data, full=data.complete)
    if n_train:
        data = replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train])
    if n_test:
        data = replace(data, test_x=data.test_x[:n_test], test_y=data.test_y[:n_test])
    return data


def load_dataset(
    name: str, root: str | None = None, train_size: int | None = None, test_size: int | None = None
) -> ImageData:
    """Load (once per process) and return a dataset by registry name."""
    return _load_cached(name, root, train_size, test_size)


def from_config(cfg: DatasetConfig) -> ImageData:
    """The dataset a suite's ``dataset`` section names (loaded once per process)."""
    return load_dataset(cfg.name, cfg.root, cfg.train_size, cfg.test_size)
