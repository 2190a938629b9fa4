"""MNIST-layout datasets: find the four IDX files, verify their checksums, decode them."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.data.base import DataError, ImageData, make_image_data

IDX_DTYPE = {0x08: torch.uint8}
# the largest IDX file bench decompresses: 256 MiB (MNIST's training images are 47 MB); a header
# that declares more is refused before anything is decompressed (a gzip bomb stops here)
MAX_IDX_BYTES = 256 << 20


def read_bytes(path: Path) -> bytes:
    """The decompressed bytes of an IDX file (raw or .gz); errors name the file.

    The header is read first, and then only the payload it declares (and one byte more, which
    tells a padded file): never more than ``MAX_IDX_BYTES``, whatever the file expands to."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            ndim = head[3] if len(head) == 4 else 0
            head += f.read(4 * ndim)
            size = len(head)
            if ndim and len(head) == 4 + 4 * ndim:
                size += math.prod(struct.unpack(f">{ndim}I", head[4:]))
                if size > MAX_IDX_BYTES:
                    raise DataError(
                        f"{path}: the IDX header declares {size} bytes, more than bench reads "
                        f"(MAX_IDX_BYTES = {MAX_IDX_BYTES})"
                    )
            return head + f.read(size - len(head) + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from None


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
    if expected == header:  # torch.frombuffer refuses an empty buffer
        raise DataError(f"{path}: the IDX file holds no values (shape {tuple(shape)})")
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


DATA_DIR_ENV = "BENCH_DATA_DIR"  # the folder to look in (and download into) when the suite names none
DEFAULT_DATA_DIR = "~/.cache/bench/data"


def _file_md5(path: Path) -> str:
    """md5 of a file as stored (compressed), streamed."""
    h = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    return h.hexdigest()


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
        """Where the files are looked for: a ``root`` the suite names, and only there (a root that
        lacks them never falls back to another copy); else ``$BENCH_DATA_DIR``, the default download
        folder (where a download without either puts them), then the system folders."""
        if root:
            bases = [Path(root).expanduser()]
        else:
            bases = [Path(p).expanduser() for p in (os.environ.get(DATA_DIR_ENV),) if p]
            bases += [Path(DEFAULT_DATA_DIR).expanduser()] + [Path(p) for p in self.system_dirs]
        dirs: list[Path] = []
        for b in bases:
            dirs += [b, b / self.name, b / self.folder / "raw"]
        return dirs

    def find(self, root: str | None) -> dict[str, Path] | None:
        """The four files in the first directory that holds all of them (.gz preferred).
        Under a named ``root``, something that is not a regular file where one belongs is an error."""
        for d in self.search_dirs(root):
            found = {}
            for key, stem in self.FILES.items():
                for cand in (d / f"{stem}.gz", d / stem):
                    if cand.is_file():
                        found[key] = cand
                        break
                    if root and cand.exists():  # a directory, FIFO or device where a file belongs
                        raise DataError(f"{cand}: not a regular file (dataset.root must hold the IDX files)")
            if len(found) == 4:
                return found
        return None

    def read_verified(self, path: Path) -> torch.Tensor:
        """The file's tensor. A .gz file is checked against the published .gz md5 before it is
        decompressed; only where a content md5 is known too (a recompressed copy) is a .gz that
        does not match decompressed, bounded by ``MAX_IDX_BYTES``, and its content checked."""
        stem = path.name.removesuffix(".gz")
        gz_md5 = self.md5.get(stem + ".gz")
        known = self.content_md5.get(stem)
        gz_ok = path.suffix == ".gz" and gz_md5 is not None and _file_md5(path) == gz_md5
        if path.suffix == ".gz" and gz_md5 is not None and not gz_ok and known is None:
            raise DataError(f"{path}: checksum mismatch (md5 expected {gz_md5}); the file is corrupted")
        raw = read_bytes(path)
        if gz_ok:
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
            where = "\n  ".join(str(d) for d in dict.fromkeys(self.search_dirs(root)))
            raise DataError(
                f"{self.name}: IDX files not found and could not be downloaded. Put the four files "
                f"({', '.join(s + '.gz' for s in self.FILES.values())}) in one of the folders "
                f"searched:\n  {where}\nor set dataset.root in the suite, or the environment "
                f"variable {DATA_DIR_ENV} to the folder that holds them."
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
        if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
            raise DataError(
                f"{files['test_x']}: test images are {tuple(arrays['test_x'].shape[1:])}, the training "
                f"images ({files['train_x']}) {tuple(arrays['train_x'].shape[1:])}; both splits need one size"
            )
        return make_image_data(
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

        target = Path(root or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
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
