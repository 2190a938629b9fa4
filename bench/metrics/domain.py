"""The ``domain`` feature extractor: a small CNN classifier trained on the dataset's training split.

Its 128-d penultimate features give ``fid_domain``, ``kid_domain``, ``precision_domain`` and
``recall_domain`` (a "Fréchet LeNet distance"-style score: NOT comparable with Inception FID);
its softmax gives ``is_domain`` (upper bound: the number of classes) and ``modes_covered``. It
is cheap enough to run on every evaluation on a CPU.

The classifier is trained once per dataset and cached under a key of the dataset's checksum,
the number of training images, the kind of device that trained it and ``CODE_VERSION`` (bump
it whenever the network or its training changes). It trains on the evaluation's device: on a
GPU when the evaluation runs there, else on one CPU thread. The two give different weights
(other kernels, other rounding), so each kind of device has its own cached classifier. It is
always trained on the same part of the dataset files' training split (a suite's
``dataset.train_size`` does not change the instrument), with its own seeded RNG, so training it
never disturbs the global RNG of a run. That part is the second half (``classifier_start``): the
first half is where the reference row's held-out images and a train-split reference set come from
(``bench.metrics.generative``), so the instrument has never seen the images it scores as real.
Designed for >= 99% test accuracy on MNIST and >= 90% on Fashion-MNIST (``tests/test_domain.py``
checks Fashion-MNIST).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.cache import cache_dir, content_key, file_sha256, load_tensors, note_used, save_tensors
from bench.data import ImageData, to_float

log = logging.getLogger("bench")

CODE_VERSION = 2  # 2: trained on the second half of the training split only
FEATURE_DIM = 128
TF_NAME = "bench-domain"  # the name torch-fidelity knows this extractor by
FEATURES = ("penultimate", "logits")  # what the extractor provides
# the feature each torch-fidelity metric reads (fid, kid, prc: the features; isc: the class logits)
LAYERS = {"fid": "penultimate", "kid": "penultimate", "prc": "penultimate", "isc": "logits"}


class DomainNet(nn.Module):
    """conv 5x5/2, BN, ReLU -> conv 3x3/2, BN, ReLU -> FC 128, BN, ReLU (the features) -> FC classes."""

    def __init__(
        self, channels: int, height: int, width: int, num_classes: int, width_mult: int = 32
    ) -> None:
        super().__init__()
        k = width_mult
        h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, k, 5, stride=2, padding=2),  # (B, k, H/2, W/2)
            nn.BatchNorm2d(k),
            nn.ReLU(),
            nn.Conv2d(k, 2 * k, 3, stride=2, padding=1),  # (B, 2k, H/4, W/4)
            nn.BatchNorm2d(2 * k),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * k * h * w, FEATURE_DIM),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> (features (B, 128), logits (B, classes))."""
        f = self.features(x)
        return f, self.head(f)


@dataclass(frozen=True)
class TrainConfig:
    """How the classifier is trained: part of its cache key."""

    epochs: int = 3
    min_steps: int = 150  # small training splits (generated test data) still get a trained net
    batch_size: int = 128
    max_lr: float = 3e-3  # one-cycle schedule, Adam
    seed: int = 0


@dataclass(frozen=True)
class Classifier:
    """A trained, cached domain classifier: the file torch-fidelity's extractor loads, and its facts."""

    path: Path
    sha256: str
    key: str
    test_accuracy: float
    num_classes: int
    trained_on: str  # the kind of device: cpu | cuda | mps


def _net_config(data: ImageData) -> dict[str, int]:
    c, h, w = data.image_shape
    return {"channels": c, "height": h, "width": w, "num_classes": data.num_classes}


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """One intra-op thread while training on a CPU: batches of 128 small images gain little from
    more, and on shared cores the spin-waiting of idle threads makes it slower: on 2 CPU cores
    shared with other work (load average 1.0 to 1.7), 42 training steps/s on one thread against
    19 on two."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def classifier_start(n_train: int) -> int:
    """The first training image the classifier trains on: the ones before it are never seen by the
    instrument, and are all the held-out or reference images a train split may give."""
    return n_train // 2


def train_classifier(data: ImageData, cfg: TrainConfig, device: torch.device) -> tuple[dict, float]:
    """Train on the second half of ``data``'s training split, on ``device``; returns (state_dict on
    CPU, test accuracy)."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), _one_cpu_thread(device):
        torch.manual_seed(cfg.seed)
        net = DomainNet(**_net_config(data)).to(device)
        first = classifier_start(len(data.train_x))
        x, y = data.train_x[first:].to(device), data.train_y[first:].to(device)
        n, bs = len(x), cfg.batch_size
        per_epoch = max(1, n // bs)  # full batches only
        total = max(cfg.epochs * per_epoch, cfg.min_steps)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.max_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=total)
        g = torch.Generator().manual_seed(cfg.seed)
        net.train()
        for step in range(total):
            k = step % per_epoch
            if k == 0:  # a fresh permutation every epoch
                perm = torch.randperm(n, generator=g).to(device)
            idx = perm[k * bs : (k + 1) * bs]
            loss = F.cross_entropy(net(to_float(x[idx]))[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        acc = accuracy(net, data.test_x.to(device), data.test_y.to(device))
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}, acc


@torch.inference_mode()
def accuracy(net: DomainNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    pred = torch.cat(
        [net(to_float(x[i : i + batch_size]))[1].argmax(1) for i in range(0, len(x), batch_size)]
    )
    return (pred == y).double().mean().item()


def classifier(data: ImageData, device: torch.device, cfg: TrainConfig = TrainConfig()) -> Classifier:
    """The cached classifier for ``data`` (the second half of its training split), training it on first use
    on ``device`` (the evaluation's); a classifier trained on another kind of device is another
    cache entry, never reused here."""
    device = torch.device(device)
    parts = {
        "dataset": data.name,
        "checksum": data.checksum,
        "n_train": len(data.train_x),
        "net": _net_config(data),
        "train": asdict(cfg),
        "trained_on": device.type,
        "code_version": CODE_VERSION,
    }
    key = content_key(parts)
    path = note_used(cache_dir() / "domain" / f"{data.name}-{key}.pt")
    blob = _readable(path, _net_config(data)) if path.is_file() else None
    if blob is None:
        log.info("training the domain classifier for %s (once; cached in %s)", data.name, path.parent)
        state, acc = train_classifier(data, cfg, device)
        blob = {"net": _net_config(data), "state_dict": state, "test_accuracy": acc, "key": parts}
        save_tensors(blob, path)
    return Classifier(
        path, file_sha256(path), key, float(blob["test_accuracy"]), data.num_classes, device.type
    )


def _readable(path: Path, net: dict) -> dict | None:
    """The cached classifier at ``path`` when it is one bench wrote for this net; None (with a
    warning) for a damaged, truncated or foreign file, which is then trained again: tensors only
    are ever loaded, so a planted file never runs, and weights that are not finite (which would
    give NaN features, and scores that fail far from here) are never used."""
    try:
        blob = load_tensors(path)
        if blob["net"] != net:
            raise ValueError(f"a classifier for another net ({blob['net']})")
        state = blob["state_dict"]
        DomainNet(**net).load_state_dict(state)
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        bad += [k for k, v in state.items() if k.endswith("running_var") and not bool((v >= 0).all())]
        if bad:
            raise ValueError(f"weights that are not finite, or negative variances: {', '.join(bad)}")
        acc = float(blob["test_accuracy"])
        if not 0 <= acc <= 1:
            raise ValueError(f"a test accuracy of {acc}")
        return blob
    except Exception as e:  # CacheFileError, a missing key, shapes that do not fit, NaN weights
        log.warning("domain classifier %s unusable (%s); training it again", path, str(e)[:300])
        return None
