"""Datasets: a registry of loaders, each returning both splits in memory as uint8.

``load_dataset`` loads a dataset once per process; ``from_config`` does it for a suite's
``dataset`` section. Adding a dataset is one loader and one ``DATASETS.add`` line. Besides the
registered names, ``torchvision:<Class>`` names any torchvision image dataset with train/test splits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

from bench.config import DatasetConfig
from bench.data.base import (
    DataError,
    ImageData,
    batch_indices,
    binarized,
    make_image_data,
    steps_per_epoch,
    to_float,
)
from bench.data.folders import describe_fit, fit_images, load_imagefolder, load_torchvision
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
    "binarized",
    "config_problems",
    "dataset_problem",
    "fit_images",
    "from_config",
    "load_dataset",
    "make_image_data",
    "make_synthetic",
    "read_idx",
    "steps_per_epoch",
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
DATASETS.add("imagefolder", load_imagefolder)

TORCHVISION = "torchvision:"  # prefix of the names of torchvision's datasets


def dataset_problem(name: str) -> str | None:
    """Why ``name`` names no dataset (None when it does): for ``bench validate``."""
    if name.startswith(TORCHVISION):
        cls = name[len(TORCHVISION) :]
        if not cls.isidentifier():
            return f"{name!r}: expected torchvision:<dataset class>, e.g. torchvision:CIFAR10"
        return None
    return None if name in DATASETS else DATASETS.unknown_message(name)


def _loader(name: str) -> DatasetLoader:
    if name.startswith(TORCHVISION):
        return functools.partial(load_torchvision, name[len(TORCHVISION) :])
    return DATASETS.get(name)


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
def _load_cached(
    name: str,
    root: str | None,
    train_size: int | None,
    test_size: int | None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageData:
    data = _loader(name)(
        root=root, train_size=train_size, test_size=test_size, image_size=image_size, channels=channels
    )
    if name not in ("imagefolder",) and not name.startswith(TORCHVISION) and (image_size or channels):
        data = replace(
            make_image_data(
                data.name,
                fit_images(data.train_x, image_size, channels),
                data.train_y,
                fit_images(data.test_x, image_size, channels),
                data.test_y,
                data.num_classes,
                data.source,
            ),
            source=f"{data.source} ({describe_fit(image_size, channels)})",
        )
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
    name: str,
    root: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageData:
    """Load (once per process) and return a dataset by registry name (or ``torchvision:<Class>``)."""
    return _load_cached(name, root, train_size, test_size, image_size, channels)


def from_config(cfg: DatasetConfig) -> ImageData:
    """The dataset a suite's ``dataset`` section names (loaded once per process)."""
    args = (cfg.name, cfg.root, cfg.train_size, cfg.test_size, cfg.image_size, cfg.channels)
    return _load_binarized(*args) if cfg.binarize else load_dataset(*args)


@functools.lru_cache(maxsize=2)
def _load_binarized(*args) -> ImageData:
    return binarized(load_dataset(*args))
