"""Images from outside the package: a folder of PNG/JPEG files, or any torchvision image dataset.

Both end as the same in-memory uint8 ``ImageData`` as the built-in datasets, converted once as
they are read: ``channels`` (1 greyscale, 3 RGB) by Pillow's conversion, ``image_size`` by
resizing the shorter side (bilinear, antialiased) and taking the centre square; 16-bit greyscale
images are scaled to 8 bits. What was done is written into the dataset's ``source`` (its
provenance); the checksum is of the converted arrays.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bench.data.base import DataError, ImageData, make_image_data, memory_problem

RESIZE_BYTES_PER_VALUE = 6  # a uint8 output value and its float32 working copy, with room

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow's modes of 16-bit greyscale (a 16-bit PNG opens as one of these, "I" in older Pillow)
WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
GREY_MODES = ("1", "L", "LA", "F", *WIDE_GREY_MODES)


def fit_images(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, image_size, image_size): channels first (greyscale
    by ITU-R 601 luma, as Pillow converts; or grey tiled to RGB), then shorter side resized to
    ``image_size`` (bilinear, antialiased) and the centre square cropped. None leaves that part."""
    from torchvision.transforms.v2 import functional as TF

    if channels is not None and x.shape[1] != channels:
        x = x.repeat(1, 3, 1, 1) if channels == 3 else TF.rgb_to_grayscale(x[:, :3], num_output_channels=1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        # the resize's output and its float working copies: refused before, not killed during
        problem = memory_problem(len(x), (x.shape[1], image_size, image_size), RESIZE_BYTES_PER_VALUE)
        if problem:
            raise DataError(f"dataset.image_size {image_size}: {problem}")
        if min(x.shape[-2:]) != image_size:
            x = TF.resize(x, [image_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        x = TF.center_crop(x, [image_size, image_size])
    return x.contiguous()


def describe_fit(image_size: int | None, channels: int | None) -> str:
    parts = []
    if channels is not None:
        parts.append("greyscale (ITU-R 601 luma)" if channels == 1 else "RGB")
    if image_size is not None:
        parts.append(
            f"shorter side resized to {image_size} (bilinear, antialiased), "
            f"centre {image_size}x{image_size} crop"
        )
    return "; ".join(parts) or "as stored"


# --------------------------------------------------------------------------- image folders


def _split_files(folder: Path) -> tuple[list[Path], list[str | None]]:
    """Image files of one split and their class (subfolder name), or None for files at the top."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (imagefolder reads <root>/train and <root>/test)")
    files: list[Path] = []
    classes: list[str | None] = []

    def image(q: Path) -> bool:  # an image file by its name; one that is no regular file is refused
        if q.suffix.lower() not in IMAGE_SUFFIXES or q.is_dir():
            return False
        if not q.is_file():  # reading a pipe would wait forever, a device never end
            raise DataError(f"{q}: not a regular file (a pipe, a device or a broken link)")
        return True

    for p in sorted(folder.iterdir()):
        if p.is_dir():
            inner = sorted(q for q in p.rglob("*") if image(q))
            files += inner
            classes += [p.name] * len(inner)
        elif image(p):
            files.append(p)
            classes.append(None)
    if not files:
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)} files) in the folder or its subfolders"
        )
    labelled = {c is not None for c in classes}
    if len(labelled) > 1:
        raise DataError(
            f"{folder}: some images are in class subfolders and some are not; put every image in a "
            "class subfolder (labels) or none (no labels)"
        )
    return files, classes


def _to_8bit(im):
    """A 16-bit greyscale image as 8-bit "L", its levels scaled (0..65535 onto 0..255, rounded).
    Pillow's own conversion clips them instead: every level above 255 would become white. An image
    of mode "I" (32-bit integers) whose levels all fit in 0..255 holds 8-bit levels: they are kept."""
    import numpy as np
    from PIL import Image

    levels = np.asarray(im, dtype=np.float64)
    if im.mode == "I" and levels.size and levels.min() >= 0 and levels.max() <= 255:
        return Image.fromarray(levels.astype(np.uint8), mode="L")
    levels = np.clip(levels, 0, 65535)
    return Image.fromarray(np.rint(levels * (255 / 65535)).astype(np.uint8), mode="L")


def _read_images(files: list[Path], channels: int, image_size: int | None) -> tuple[torch.Tensor, bool]:
    """The images as uint8 (N, channels, H, W), and whether any was 16-bit (scaled to 8 bits)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    out, first, wide = [], None, False
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode in WIDE_GREY_MODES:
                    im, wide = _to_8bit(im), True
                img = TF.pil_to_tensor(im.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            # a decompression bomb: a header declaring far more pixels than Pillow's limit
            raise DataError(f"{f}: cannot read the image ({e})") from None
        img = fit_images(img[None], image_size, None)[0]
        if first is None:
            first = (f, tuple(img.shape))
        elif tuple(img.shape) != first[1]:
            raise DataError(
                f"{f}: image is {img.shape[2]}x{img.shape[1]}, {first[0].name} is "
                f"{first[1][2]}x{first[1][1]}; set dataset.image_size to resize them to one size"
            )
        out.append(img)
    return torch.stack(out), wide


def _guess_channels(files: list[Path]) -> int:
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in GREY_MODES:
                    return 3
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # ValueError: a text chunk too large
            raise DataError(f"{f}: cannot read the image ({e})") from None
    return 1


def load_imagefolder(
    root: str | None = None, image_size: int | None = None, channels: int | None = None, **_: Any
) -> ImageData:
    """``root/train`` and ``root/test``: images, in class subfolders (labels) or not (no labels)."""
    if root is None:
        raise DataError("imagefolder: set dataset.root to a folder holding train/ and test/")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{base}: folder not found (dataset.root of an imagefolder dataset)")
    (train_f, train_c), (test_f, test_c) = _split_files(base / "train"), _split_files(base / "test")
    if (train_c[0] is None) != (test_c[0] is None):
        raise DataError(f"{base}: train/ and test/ must both use class subfolders, or neither")
    names = sorted({c for c in train_c if c is not None})
    unknown = sorted({c for c in test_c if c is not None} - set(names))
    if unknown:
        raise DataError(f"{base / 'test'}: classes {', '.join(unknown)} have no images in train/")
    index = {c: i for i, c in enumerate(names)}
    ch = channels or _guess_channels(train_f + test_f)
    problem = image_size and memory_problem(len(train_f) + len(test_f), (ch, image_size, image_size), 2)
    if problem:  # each image read, then all of them stacked
        raise DataError(f"{base}: dataset.image_size {image_size}: {problem}")
    arrays, wide = {}, False
    for split, files, cls in (("train", train_f, train_c), ("test", test_f, test_c)):
        arrays[f"{split}_x"], split_wide = _read_images(files, ch, image_size)
        wide = wide or split_wide
        arrays[f"{split}_y"] = torch.tensor(
            [index[c] if c is not None else -1 for c in cls], dtype=torch.long
        )
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DataError(
            f"{base}: train images are {tuple(arrays['train_x'].shape[1:])}, test images "
            f"{tuple(arrays['test_x'].shape[1:])}; set dataset.image_size"
        )
    labels = f"{len(names)} classes from subfolders" if names else "no labels"
    if wide:
        labels += "; 16-bit images scaled to 8 bits"
    return make_image_data(
        "imagefolder",
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        len(names),
        source=f"{base} (imagefolder; {labels}; {describe_fit(image_size, ch)})",
    )


# --------------------------------------------------------------------------- torchvision


def torchvision_root(root: str | None) -> Path:
    return Path(root or os.environ.get("BENCH_DATA_DIR") or "~/.cache/bench/data").expanduser()


def _split_kwargs(cls: type, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        return {"train": True}, {"train": False}
    if "split" in params:
        return {"split": "train"}, {"split": "test"}
    raise DataError(
        f"torchvision:{name}: the dataset has no train/test splits (no 'train' or 'split' argument)"
    )


def _open_split(cls: type, name: str, root: Path, kw: dict[str, Any]):
    try:
        return cls(str(root), download=False, **kw)
    except (RuntimeError, OSError, FileNotFoundError):
        pass
    try:
        return cls(str(root), download=True, **kw)
    except Exception:  # no network, proxy refused, server gone: the clear error below
        raise DataError(
            f"torchvision:{name}: the files are not in {root} and could not be downloaded (no network?). "
            f"On a machine with a network run torchvision.datasets.{name}(root, download=True) for "
            f"both splits and copy root's contents to {root}, or set dataset.root (or BENCH_DATA_DIR) "
            "to where they are."
        ) from None


def _split_arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 images and (N,) labels of a torchvision dataset (PIL or tensor items)."""
    import numpy as np
    from torchvision.transforms.v2 import functional as TF

    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3:
        if targets is not None and len(targets) == len(data):  # CIFAR layout: (N, H, W, 3) in memory
            return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(targets).long()
    images, labels = [], []
    for i in range(len(ds)):
        img, y = ds[i]
        if not isinstance(img, torch.Tensor):
            img = _to_8bit(img) if img.mode in WIDE_GREY_MODES else img
            img = TF.pil_to_tensor(img.convert("L" if img.mode in GREY_MODES else "RGB"))
        images.append(img if img.dim() == 3 else img[None])
        labels.append(int(y[0] if isinstance(y, (tuple, list)) else y))
    return torch.stack(images).to(torch.uint8), torch.tensor(labels, dtype=torch.long)


def load_torchvision(
    name: str, root: str | None = None, image_size: int | None = None, channels: int | None = None, **_: Any
) -> ImageData:
    """``torchvision:<Class>``: any torchvision image dataset with train/test splits, converted."""
    import torchvision

    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise DataError(f"torchvision:{name}: torchvision.datasets has no dataset {name!r}")
    base = torchvision_root(root)
    existed = base.exists()
    arrays, classes = {}, None
    for split, kw in zip(("train", "test"), _split_kwargs(cls, name)):
        try:
            ds = _open_split(cls, name, base, kw)
        except DataError:
            if not existed and not any(p.is_file() for p in base.rglob("*")):  # leave nothing behind
                shutil.rmtree(base, ignore_errors=True)
            raise
        classes = classes or getattr(ds, "classes", None)
        x, y = _split_arrays(ds)
        arrays[f"{split}_x"] = fit_images(x, image_size, channels)
        arrays[f"{split}_y"] = y
    n = len(classes) if classes else int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1
    return make_image_data(
        f"torchvision:{name}",
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        n,
        source=f"{base} (torchvision.datasets.{name}; {describe_fit(image_size, channels)})",
    )
