"""Datasets: find local IDX files, verify them, load each split once into memory as uint8.

Training batches are cut from the in-memory tensors by index (no per-sample PIL / DataLoader
path); a batch for step ``s`` is a pure function of (seed, s), which makes resuming exact.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.registry import Registry


class DataError(RuntimeError):
    """A dataset could not be found, read or verified. The message names the file."""


@dataclass(frozen=True)
class ImageData:
    """Both splits of an image dataset, resident in memory (CPU or GPU)."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    num_classes: int
    checksum: str  # sha256 of the decoded arrays: the content key for every cache
    source: str  # where the files came from (provenance)

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


# --------------------------------------------------------------------------- IDX files

IDX_DTYPE = {0x08: torch.uint8}


def read_bytes(path: Path) -> bytes:
    """The decompressed bytes of an IDX file (raw or .gz); errors name the file."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None


def parse_idx(raw: bytes, path: Path) -> torch.Tensor:
    """Parse IDX bytes (unsigned-byte payload) into a tensor of the header's shape."""
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype not in IDX_DTYPE or ndim == 0:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(torch.Size(shape).numel())
    if len(raw) != expected:
        raise DataError(f"{path}: truncated or padded IDX file: {len(raw)} bytes, header says {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (raw or .gz) into a tensor; errors name the file."""
    return parse_idx(read_bytes(path), path)


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzip when the name ends in .gz). Used by tests and tools."""
    data = data.to(torch.uint8).contiguous()
    payload = struct.pack(">HBB", 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    payload += data.numpy().tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-layout dataset: four IDX files (.gz or raw) and their known checksums.

    A file is accepted when its md5 equals the published .gz file's, or when the md5 of its
    decompressed content equals the known content md5 (redistributors such as Debian recompress
    the .gz files). A file matching neither is rejected; where no checksum is known (a raw
    MNIST file), the structure is checked (magic, shape, counts) and the content hash recorded.
    """

    name: str
    folder: str  # torchvision's folder name, e.g. "FashionMNIST"
    md5: dict[str, str]  # published .gz file name -> md5 of the .gz file
    content_md5: dict[str, str] = field(default_factory=dict)  # file stem -> md5 of the decompressed bytes
    system_dirs: tuple[str, ...] = ()
    num_classes: int = 10

    FILES = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }

    def search_dirs(self, root: str | None) -> list[Path]:
        bases = [Path(p).expanduser() for p in (root, os.environ.get("BENCH_DATA_DIR")) if p]
        bases += [Path(p) for p in self.system_dirs]
        dirs: list[Path] = []
        for b in bases:
            dirs += [b, b / self.name, b / self.folder / "raw"]
        return dirs

    def find(self, root: str | None) -> dict[str, Path] | None:
        """The four files in the first directory that holds all of them (.gz preferred)."""
        for d in self.search_dirs(root):
            found = {}
            for key, stem in self.FILES.items():
                for cand in (d / f"{stem}.gz", d / stem):
                    if cand.is_file():
                        found[key] = cand
                        break
            if len(found) == 4:
                return found
        return None

    def read_verified(self, path: Path) -> torch.Tensor:
        raw = read_bytes(path)
        stem = path.name.removesuffix(".gz")
        gz_md5 = self.md5.get(stem + ".gz")
        known = self.content_md5.get(stem)
        if path.suffix == ".gz" and gz_md5 is not None and _md5(path.read_bytes()) == gz_md5:
            pass
        elif known is not None:
            if _md5(raw) != known:
                raise DataError(
                    f"{path}: checksum mismatch (content md5 expected {known}); the file is corrupted"
                )
        elif path.suffix == ".gz" and gz_md5 is not None:
            raise DataError(f"{path}: checksum mismatch (md5 expected {gz_md5}); the file is corrupted")
        return parse_idx(raw, path)

    def load(self, root: str | None, download: bool = True) -> ImageData:
        files = self.find(root)
        if files is None and download:
            files = self._download(root)
        if files is None:
            where = "\n  ".join(str(d) for d in self.search_dirs(root)[:6])
            raise DataError(
                f"{self.name}: IDX files not found and could not be downloaded. Put the four files "
                f"({', '.join(s + '.gz' for s in self.FILES.values())}) in one of:\n  {where}\n"
                f"or set dataset.root in the suite, or BENCH_DATA_DIR."
            )
        arrays = {k: self.read_verified(p) for k, p in files.items()}
        for split in ("train", "test"):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise DataError(
                    f"{files[split + '_x']}: expected (N, H, W) images with N labels, got images "
                    f"{tuple(x.shape)} and labels {tuple(y.shape)}"
                )
            if int(y.max()) >= self.num_classes:
                raise DataError(f"{files[split + '_y']}: label {int(y.max())} out of range")
        return _make(
            self.name,
            arrays["train_x"].unsqueeze(1),
            arrays["train_y"].long(),
            arrays["test_x"].unsqueeze(1),
            arrays["test_y"].long(),
            self.num_classes,
            source=str(files["train_x"].parent),
        )

    def _download(self, root: str | None) -> dict[str, Path] | None:
        """Download through torchvision into a temporary folder, and move the files into place
        only when every one arrived: a failed or interrupted download leaves nothing behind."""
        import shutil
        import tempfile

        import torchvision

        target = Path(root or os.environ.get("BENCH_DATA_DIR") or "~/.cache/bench/data").expanduser()
        cls = getattr(torchvision.datasets, self.folder)
        created: Path | None = None  # the topmost folder this download creates, removed if it fails
        if not target.exists():
            created = target
            while not created.parent.exists():
                created = created.parent
        tmp: Path | None = None
        ok = False
        try:
            target.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target))
            cls(str(tmp), train=True, download=True)
            cls(str(tmp), train=False, download=True)
            dest = target / self.folder / "raw"
            dest.mkdir(parents=True, exist_ok=True)
            for f in (tmp / self.folder / "raw").iterdir():
                os.replace(f, dest / f.name)
            ok = True
        except Exception:  # no network, proxy refused, server gone: fall through to the clear error
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if not ok and created is not None and not any(p.is_file() for p in created.rglob("*")):
                shutil.rmtree(created, ignore_errors=True)
        return self.find(str(target))


def _make(name, train_x, train_y, test_x, test_y, num_classes, source) -> ImageData:
    h = hashlib.sha256()
    for t in (train_x, train_y, test_x, test_y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return ImageData(name, train_x, train_y, test_x, test_y, num_classes, h.hexdigest()[:16], source)


# --------------------------------------------------------------------------- synthetic


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
    return _make("synthetic", train_x, train_y, test_x, test_y, 10, source=f"generated (seed {seed})")


# --------------------------------------------------------------------------- registry

DatasetLoader = Callable[..., ImageData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")

MNIST = IdxDataset(
    "mnist",
    "MNIST",
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)
FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    "FashionMNIST",
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    content_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)

DATASETS.add("mnist", lambda root=None, **_: MNIST.load(root))
DATASETS.add("fashion-mnist", lambda root=None, **_: FASHION_MNIST.load(root))
DATASETS.add(
    "synthetic",
    lambda root=None, train_size=None, test_size=None, **_: make_synthetic(
        train_size or 2048, test_size or 512
    ),
)


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
    """The first n images of a split: a deterministic, documented subset."""
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
