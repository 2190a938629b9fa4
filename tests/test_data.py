"""IDX reading, dataset discovery and verification, index batching."""

import gzip

import pytest
import torch
from conftest import FASHION_DIR

from bench.data import FASHION_MNIST, DataError, IdxDataset, batch_indices, load_dataset, read_idx, write_idx


def fake_mnist(folder, n_train=60, n_test=10, gz=True):
    g = torch.Generator().manual_seed(0)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (n_train,), generator=g),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (n_test,), generator=g),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    assert torch.equal(
        read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), arrays["train-images-idx3-ubyte"].byte()
    )
    assert torch.equal(
        read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), arrays["t10k-labels-idx1-ubyte"].byte()
    )


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    fake_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{path}: truncated"):
        read_idx(path)
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"{bad}: cannot read"):
        read_idx(bad)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(junk)


def test_discovery_in_root_and_env_and_torchvision_layout(tmp_path, monkeypatch):
    ds = IdxDataset("mnist", "MNIST", md5={})
    fake_mnist(tmp_path / "MNIST" / "raw")
    data = ds.load(str(tmp_path), download=False)
    assert data.train_x.shape == (60, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_y.dtype == torch.int64
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert ds.load(None, download=False).checksum == data.checksum


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    ds = IdxDataset("mnist", "MNIST", md5={})
    with pytest.raises(DataError, match="IDX files not found") as e:
        ds.load(str(tmp_path / "empty"), download=False)
    assert str(tmp_path / "empty") in str(e.value)


def test_missing_files_without_a_root_name_the_folders_searched(tmp_path, monkeypatch):
    """No dataset.root and no $BENCH_DATA_DIR: the message still lists folders, and the variable."""
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the default folder, ~/.cache/bench/data, is empty
    with pytest.raises(DataError) as e:
        IdxDataset("mnist", "MNIST", md5={}).load(None, download=False)
    text = str(e.value)
    listed = text.split("folders searched:\n")[1].split("\nor set")[0].split("\n")
    assert listed and all(line.strip() for line in listed)
    assert str(tmp_path / ".cache" / "bench" / "data") in listed[0]
    assert "BENCH_DATA_DIR" in text


def test_checksum_mismatch_is_detected(tmp_path):
    fake_mnist(tmp_path)
    ds = IdxDataset("mnist", "MNIST", md5={"train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        ds.load(str(tmp_path), download=False)


def test_recompressed_file_is_accepted_by_its_content_checksum(tmp_path):
    import hashlib

    arrays = fake_mnist(tmp_path)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    ds = IdxDataset(
        "mnist",
        "MNIST",
        md5={"train-images-idx3-ubyte.gz": "0" * 32},
        content_md5={"train-images-idx3-ubyte": hashlib.md5(raw).hexdigest()},
    )
    data = ds.load(str(tmp_path), download=False)
    assert torch.equal(data.train_x[:, 0], arrays["train-images-idx3-ubyte"].byte())
    ds_bad = IdxDataset("mnist", "MNIST", md5={}, content_md5={"train-images-idx3-ubyte": "1" * 32})
    with pytest.raises(DataError, match="content md5 expected"):
        ds_bad.load(str(tmp_path), download=False)


def test_label_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: expected"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)


def test_batches_cover_each_epoch_exactly_once():
    n, bs = 10, 4
    steps = [batch_indices(n, bs, s, seed=3, device=torch.device("cpu")) for s in range(6)]
    assert [len(b) for b in steps] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(steps[:3]).tolist()) == list(range(n))
    assert sorted(torch.cat(steps[3:]).tolist()) == list(range(n))
    assert not torch.equal(torch.cat(steps[:3]), torch.cat(steps[3:]))  # a new permutation per epoch
    again = batch_indices(n, bs, 4, seed=3, device=torch.device("cpu"))
    assert torch.equal(again, steps[4])  # a pure function of (seed, step): resumable


def test_synthetic_is_deterministic_and_sized():
    a = load_dataset("synthetic", train_size=100, test_size=20)
    assert a.train_x.shape == (100, 1, 28, 28) and a.test_x.shape == (20, 1, 28, 28)
    from bench.data import make_synthetic

    assert make_synthetic(100, 20).checksum == a.checksum


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    data = FASHION_MNIST.load(None, download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert int(data.train_y.max()) == 9 and data.source.startswith(str(FASHION_DIR))


@pytest.mark.parametrize("labelled", [False, True])
def test_an_image_name_that_is_no_regular_file_is_refused_not_read(tmp_path, labelled):
    """A pipe named like an image, at a split's top or in a class folder: reading it would wait for
    ever. It is refused, naming it (before: bench validate --data hung)."""
    import os

    from plugin_fixtures import write_images

    root = write_images(tmp_path / "images", n_train=2, n_test=2, labelled=labelled)
    fifo = root / "train" / ("circle" if labelled else "") / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=f"{fifo}: not a regular file"):
        load_dataset("imagefolder", root=str(root))


def test_a_png_whose_text_chunk_inflates_past_pillow_s_limit_is_a_data_error(tmp_path):
    """Pillow raises ValueError for a compressed text chunk larger than it will inflate (2 KB on
    disk, 2 MB inflated): the folder's channels are guessed from that file, so the error names it."""
    import io
    import struct
    import zlib

    from PIL import Image
    from plugin_fixtures import write_images

    root = write_images(tmp_path / "images", n_train=2, n_test=2, labelled=False)
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    data = b"k\x00\x00" + zlib.compress(b"a" * (2 * 1024 * 1024))
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    at = png.index(b"IDAT") - 4
    bad = root / "train" / "0-first.png"  # the first file read
    bad.write_bytes(png[:at] + chunk + png[at:])
    with pytest.raises(DataError, match=f"{bad}: cannot read the image"):
        load_dataset("imagefolder", root=str(root))


def test_images_that_would_not_fit_in_memory_are_a_data_error_before_they_are_made(tmp_path, monkeypatch):
    """synthetic at image_size 1024 with 20,000 images asked for 21 GB and more: the allocation
    failed with a traceback, or the kernel killed the process. The need is said first."""
    from plugin_fixtures import write_images

    import bench.data.base as base

    monkeypatch.setattr(base, "available_memory", lambda: 50 * 2**20)  # 50 MiB left
    need = "2,048 images of 1x256x256 need about 768 MiB of memory to make; this machine has 50 MiB available"
    with pytest.raises(DataError, match=f"dataset.image_size 256: {need}"):
        load_dataset("synthetic", train_size=2048, test_size=512, image_size=256)
    root = write_images(tmp_path / "images", n_train=2, n_test=2)
    with pytest.raises(DataError, match=r"dataset.image_size 4096: 8 images of 3x4096x4096 need about"):
        load_dataset("imagefolder", root=str(root), image_size=4096)
    monkeypatch.setattr(base, "available_memory", lambda: None)  # unknown: not refused
    small = load_dataset("synthetic", train_size=16, test_size=8, image_size=32)
    assert small.train_x.shape == (16, 1, 32, 32)
