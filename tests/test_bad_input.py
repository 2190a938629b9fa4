"""Bad input through the real CLI: exit 2, one `<file>: <field.path>: <message>` line per error,
and nothing written: no tracking store, no run folder, no report.

The catalogue lives in tests/fixtures/bad/: each file says what is wrong with it in its first
comment and lists the error lines it must produce as `# expect: <field.path>: <substring>`.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_suite
from test_data import fake_mnist

from bench.cli import main
from bench.data import MNIST, DataError, IdxDataset, write_idx

BAD = sorted((Path(__file__).parent / "fixtures" / "bad").glob("*.yaml"))
REPO = Path(__file__).parent.parent


def expectations(path: Path) -> list[tuple[str, str]]:
    """(field path, substring) pairs from the file's `# expect:` lines."""
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.startswith("# expect: "):
            loc, _, text = line.removeprefix("# expect: ").partition(": ")
            out.append((loc, text))
    return out


def test_the_catalogue_is_large_and_every_file_says_what_it_expects():
    assert len(BAD) >= 25
    assert all(expectations(p) for p in BAD), [p.name for p in BAD if not expectations(p)]


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    rc = main(args)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_suite_exits_2_with_one_line_per_error_and_writes_nothing(path, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default store, run folders and reports would land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store" / "mlflow.db"
    expected = expectations(path)
    for verb in (
        ["run", "--tracking-uri", f"sqlite:///{store}", "--out", str(tmp_path / "rep")],
        ["validate"],
    ):
        rc, lines = run_cli([verb[0], str(path), *verb[1:]], capsys)
        assert rc == 2, lines
        assert len(lines) == len(expected), lines  # one line per error, nothing else
        assert all(line.startswith(f"{path}: ") for line in lines), lines
        for loc, text in expected:
            assert any(line.startswith(f"{path}: {loc}: ") and text in line for line in lines), (
                f"no line for {loc}: {text!r} in {lines}"
            )
    assert not (tmp_path / "store").exists() and not (tmp_path / "rep").exists()
    assert list(work.iterdir()) == []


def test_a_folder_or_a_missing_file_is_named(tmp_path, capsys):
    rc, lines = run_cli(["validate", str(tmp_path)], capsys)
    assert rc == 2 and lines == [f"{tmp_path}: (file): cannot read: it is a directory"]
    missing = tmp_path / "nope.yaml"
    rc, lines = run_cli(["run", str(missing), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], capsys)
    assert rc == 2 and lines == [f"{missing}: (file): cannot read: No such file or directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_yaml_that_would_run_code_is_refused_not_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = REPO / "tests" / "fixtures" / "bad" / "python-tag.yaml"
    assert "touch pwned" in path.read_text()
    rc, _ = run_cli(["validate", str(path)], capsys)
    assert rc == 2 and not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "missing"])
def test_damaged_data_files_exit_2_naming_the_file(damage, tmp_path, write_suite, monkeypatch, capsys):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    root = tmp_path / "data"
    fake_mnist(root, n_train=20, n_test=5)
    victim = root / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-30])
    elif damage == "corrupted":  # a valid gzip of the wrong content: only the checksum can tell
        write_idx(victim, torch.zeros(20, 28, 28, dtype=torch.uint8))
    else:
        victim.unlink()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    path = write_suite(tiny_suite(dataset={"name": "mnist", "root": str(root)}))
    store = tmp_path / "store.db"
    rc, lines = run_cli(["run", str(path), "--tracking-uri", f"sqlite:///{store}"], capsys)
    assert rc == 2
    text = "\n".join(lines)
    assert lines[0].startswith(f"{path}: dataset: ")
    if damage == "missing":  # not found locally; the download fails offline (or is refused)
        assert "IDX files not found" in text and str(root) in text
    else:
        assert str(victim) in text
        assert "checksum mismatch" in text  # the published .gz md5 is checked before decompressing
    # nothing written: no store, and no partial download or cache beside the data
    assert not store.exists() and not (tmp_path / ".bench").exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # no network, even where there is some
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    target = tmp_path / "new" / "data"
    with pytest.raises(DataError, match="IDX files not found"):
        MNIST.load(str(target))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(DataError):
        MNIST.load(str(existing))
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_wrong_dimensions_name_the_file(tmp_path):
    fake_mnist(tmp_path, n_train=20, n_test=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", torch.zeros(5, 784, dtype=torch.uint8))  # flat rows
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: expected \(N, H, W\) images"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big"))  # header cut short
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated IDX header"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)


def test_a_garbled_gzip_is_a_data_error_naming_the_file(tmp_path):
    fake_mnist(tmp_path, n_train=20, n_test=5)
    victim = tmp_path / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 64)  # no valid deflate block
    with pytest.raises(DataError, match=f"{victim}: cannot read IDX file \\(error: .*invalid block type"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)


def test_a_gzip_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """A header that declares more than MAX_IDX_BYTES is refused before the payload is inflated."""
    from bench.data import idx

    fake_mnist(tmp_path, n_train=20, n_test=5)
    victim = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(victim, "wb") as f:  # 3 GB of zeros announced; 8 MB written, compressed to 8 kB
        f.write(b"\x00\x00\x08\x03" + (3_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        f.write(bytes(8 << 20))
    reads = []
    real_open = idx.gzip.open

    def counting_open(*a, **k):
        f = real_open(*a, **k)
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr(idx.gzip, "open", counting_open)
    with pytest.raises(DataError, match=f"{victim}: the IDX header declares 2352000016 bytes"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)
    assert -1 not in reads and sum(n for n in reads if n > 0) < 1 << 20  # only the header was read


def test_a_gz_with_a_wrong_published_md5_is_never_decompressed(tmp_path, monkeypatch):
    from bench.data import idx

    fake_mnist(tmp_path, n_train=20, n_test=5)
    monkeypatch.setattr(idx.gzip, "open", lambda *a, **k: pytest.fail("decompressed before the md5 check"))
    with pytest.raises(DataError, match="checksum mismatch"):
        MNIST.load(str(tmp_path), download=False)


@pytest.mark.parametrize("damage", ["missing", "directory"])
def test_a_named_root_is_used_or_fails_never_another_copy(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # no download, even where there is network
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    elsewhere = tmp_path / "elsewhere"
    fake_mnist(elsewhere, n_train=20, n_test=5)
    monkeypatch.setenv("BENCH_DATA_DIR", str(elsewhere))  # a complete copy bench must not fall back to
    root = tmp_path / "mine"
    fake_mnist(root, n_train=20, n_test=5)
    victim = root / "t10k-labels-idx1-ubyte.gz"
    victim.unlink()
    if damage == "directory":
        victim.mkdir()
        with pytest.raises(DataError, match=f"{victim}: not a regular file"):
            IdxDataset("mnist", "MNIST", md5={}).load(str(root), download=False)
    else:
        with pytest.raises(DataError, match="IDX files not found") as e:
            IdxDataset("mnist", "MNIST", md5={}).load(str(root))
        assert str(root) in str(e.value) and str(elsewhere) not in str(e.value)
    assert IdxDataset("mnist", "MNIST", md5={}).load(None, download=False).source == str(elsewhere)


# --------------------------------------------------------------------------- tracking store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free now, and nothing listens on it


def test_unreachable_store_exits_2_before_training_naming_the_uri(tmp_path, write_suite):
    uri = f"http://127.0.0.1:{closed_port()}"
    path = write_suite(tiny_suite())
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for k in list(env):
        if k.startswith("MLFLOW_HTTP_REQUEST"):
            env.pop(k)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", str(path), "--tracking-uri", uri],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang guard only: MLflow alone would retry for about four minutes
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"--tracking-uri: cannot reach the tracking store {uri}: Connection refused"]
    assert "[1/" not in proc.stderr  # no run started
    assert list(work.iterdir()) == []


def test_unusable_sqlite_path_exits_2(tmp_path, write_suite, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/mlflow.db"
    path = write_suite(tiny_suite(tracking={"uri": uri}))
    rc, lines = run_cli(["run", str(path)], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"{path}: tracking.uri: cannot reach the tracking store {uri}: ")


# --------------------------------------------------------------------------- bounded reading


def test_a_suite_file_over_the_size_limit_is_not_parsed(tmp_path, capsys):
    from bench.suite import MAX_SUITE_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("models: [" + "1, " * (MAX_SUITE_BYTES // 3 + 10) + "]\n")  # a flow list, 1 MiB+
    rc, lines = run_cli(["validate", str(path)], capsys)
    assert rc == 2 and lines == [
        f"{path}: (file): cannot read: the file is larger than {MAX_SUITE_BYTES} bytes (1 MiB, "
        "MAX_SUITE_BYTES); a suite is a few kB"
    ]


def test_node_count_is_bounded_while_composing(tmp_path, capsys):
    """Under the size limit, a flow list of 200,000 values stops at the node cap while composing."""
    path = tmp_path / "many.yaml"
    path.write_text("models: [" + "1," * 200_000 + "]\n")
    rc, lines = run_cli(["validate", str(path)], capsys)
    assert rc == 2 and lines == [
        f"{path}: (file): the document has more than 100000 values (MAX_YAML_VALUES)"
    ]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_only_regular_files_are_read(kind, tmp_path):
    if kind == "fifo":
        path = tmp_path / "suite.yaml"
        os.mkfifo(path)  # nobody writes to it: reading would wait forever
    else:
        path = Path("/dev/zero")  # reading would never end
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "validate", str(path)],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"{path}: (file): cannot read: not a regular file (a FIFO, device or socket)"
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ("models.0.hidden=[1, 2", "the value '[1, 2' did not parse as YAML: "),
        ("budget.steps=&a [*a]", "did not parse as YAML: recursive alias *a"),
        ("models.-1.beta=2", "no such place in the suite"),
        ("models.0_0.beta=2", "no such place in the suite"),
    ],
)
def test_set_values_and_indices(item, message, write_suite, capsys):
    path = write_suite(tiny_suite())
    rc, lines = run_cli(["validate", str(path), "--set", item], capsys)
    key = item.partition("=")[0]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"{path}: --set {key}: "), lines
    assert message in lines[0], lines


def test_a_deep_set_value_is_bounded(write_suite, capsys):
    path = write_suite(tiny_suite())
    rc, lines = run_cli(["validate", str(path), "--set", "budget.steps=" + "[" * 3000 + "]" * 3000], capsys)
    assert rc == 2 and len(lines) == 1 and "nested more than 32 levels deep" in lines[0], lines


def test_a_key_that_is_not_text_in_a_set_value_is_a_field_error(tmp_path, write_suite, capsys):
    path = write_suite(tiny_suite())
    for value, kind in (("{name: ae-mlp, 5: 1}", "int"), ("{name: ae-mlp, 2024-01-01: 1}", "date")):
        rc, lines = run_cli(["validate", str(path), "--set", f"models.0={value}"], capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"{path}: --set models.0.")
        assert f"keys must be text, not {kind}" in lines[0]


# --------------------------------------------------------------------------- strict numbers and booleans

# a suite whose {dataset}, {seeds} and {model} are filled in as YAML text (a dump would quote 10_0)
STRICT_SUITE = """name: strict
dataset: {{name: synthetic, train_size: 256, test_size: 64{dataset}}}
budget: {{steps: 6, batch_size: 32}}
seeds: {seeds}
device: cpu
eval: {{metrics: [{metric}]}}
models:
  - {{name: {model}}}
"""


def strict_suite(dataset: str = "", seeds: str = "[0]", model: str = "vae-mlp") -> str:
    metric = "fid" if model.startswith("gan") else "recon_mse"
    return STRICT_SUITE.format(dataset=dataset, seeds=seeds, model=model, metric=metric)


@pytest.mark.parametrize(
    "text, loc, message",
    [
        (strict_suite(seeds="[0, 10_0]"), "seeds.1", "expected a number, got the text '10_0'"),
        (strict_suite(seeds="[0, 010]"), "seeds.1", "expected a number, got the text '010'"),
        (strict_suite(seeds="[true, 2]"), "seeds.0", "expected a number, got the boolean true"),
        (strict_suite(seeds='[1, "2"]'), "seeds.1", "expected a number, got the text '2'"),
        (strict_suite(model="vae-mlp, hidden: [1_28, 64]"), "models.0.hidden.0", "got the text '1_28'"),
        (strict_suite(model="vae-mlp, hidden: [64, true]"), "models.0.hidden.1", "got the boolean true"),
        # 64.0 is a whole number, taken as 64 in a list as in a scalar field: one error, for "64"
        (strict_suite(model='vae-mlp, hidden: ["64", 64.0]'), "models.0.hidden.0", "got the text '64'"),
        (strict_suite(", channels: true"), "dataset.channels", "expected a number, got the boolean true"),
        (strict_suite(", binarize: 1"), "dataset.binarize", "true or false (got the number 1)"),
        (strict_suite(', binarize: "yes"'), "dataset.binarize", "true or false (got the text 'yes')"),
        (strict_suite(model="gan-mlp, d_batch_norm: 0"), "models.0.d_batch_norm", "(got the number 0)"),
        (strict_suite(model="jpeg, quality: true"), "models.0.quality", "got the boolean true"),
        # YAML 1.1 reads this as 10.5: bench's files read it as the text it is
        (strict_suite(model="vae-mlp, beta: 1_0.5"), "models.0.beta", "got the text '1_0.5'"),
    ],
    ids=[
        "seed-underscore",
        "seed-octal",
        "seed-boolean",
        "seed-text",
        "width-underscore",
        "width-boolean",
        "width-text",
        "literal-channels-boolean",
        "bool-field-number",
        "bool-field-text",
        "model-bool-param-number",
        "codec-param-boolean",
        "float-underscore",
    ],
)
def test_numbers_and_booleans_are_strict_in_lists_literals_and_bool_fields(
    text, loc, message, tmp_path, monkeypatch, capsys
):
    """The strict-number rule holds at every position of a field, list elements and Literal choices
    included, and a boolean field takes true or false only: one line naming the element, exit 2."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    store = tmp_path / "store" / "mlflow.db"
    for verb in (
        ["run", "--tracking-uri", f"sqlite:///{store}", "--out", str(tmp_path / "rep")],
        ["validate"],
    ):
        rc, lines = run_cli([verb[0], str(path), *verb[1:]], capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"{path}: {loc}: ") and message in lines[0], lines
    assert not (tmp_path / "store").exists() and not (tmp_path / "rep").exists()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "item, loc, message",
    [
        ("seeds.0=10_0", "seeds.0", "expected a number, got the text '10_0'"),
        ("seeds=[0, true]", "seeds.1", "expected a number, got the boolean true"),
        ("models.0.hidden.1=true", "models.0.hidden.1", "expected a number, got the boolean true"),
        ("models.0.hidden.1='16'", "models.0.hidden.1", "expected a number, got the text '16'"),
        ("dataset.channels=true", "dataset.channels", "expected a number, got the boolean true"),
        ("dataset.binarize=1", "dataset.binarize", "true or false (got the number 1)"),
    ],
)
def test_set_values_get_the_strict_rule_too(item, loc, message, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(strict_suite(model="vae-mlp, hidden: [64, 32]"))
    rc, lines = run_cli(["validate", str(path), "--set", item], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {loc}: ") and message in lines[0], lines


def test_a_plain_number_set_into_a_list_element_is_taken(tmp_path):
    from bench.suite import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(strict_suite(seeds="[0, 1]", model="vae-mlp, hidden: [64, 32]"))
    suite = load_suite(path, ["models.0.hidden.1=16", "seeds.1=7"])
    assert suite.models[0].params["hidden"] == [64, 16] and suite.seeds == [0, 7]


def test_list_elements_take_whole_numbers_as_scalar_fields_do(tmp_path):
    """``64.0`` and ``1e2`` are whole numbers (docs/reliability.md): taken by an integer field and by
    a list of integers alike; ``64.5`` is refused by both."""
    from bench.suite import SuiteError, expand, load_suite

    path = tmp_path / "suite.yaml"
    whole = "vae-mlp, hidden: [64.0, 1e2], latent_dim: 8.0"
    path.write_text(strict_suite(seeds="[0, 1e0, 2.0]", model=whole))
    suite = load_suite(path)
    assert suite.seeds == [0, 1, 2]
    assert expand(suite)[0].params["hidden"] == [64, 100] and expand(suite)[0].params["latent_dim"] == 8
    path.write_text(strict_suite(model="vae-mlp, hidden: [64.5], latent_dim: 8.5"))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    lines = str(e.value).splitlines()
    assert sorted(line.split(": ")[1] for line in lines) == ["models.0.hidden.0", "models.0.latent_dim"]
    assert all("fractional part" in line for line in lines), lines


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_idx_split_is_a_data_error_naming_the_file(split, tmp_path):
    fake_mnist(tmp_path, n_train=20, n_test=5)
    stem = "train" if split == "train" else "t10k"
    victim = tmp_path / f"{stem}-images-idx3-ubyte.gz"
    write_idx(victim, torch.zeros(0, 28, 28, dtype=torch.uint8))
    write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", torch.zeros(0, dtype=torch.uint8))
    with pytest.raises(DataError, match=f"{victim}: the IDX file holds no values"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)


def test_idx_splits_of_different_image_sizes_are_a_data_error(tmp_path):
    fake_mnist(tmp_path, n_train=20, n_test=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", torch.zeros(5, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: test images are \(32, 32\)"):
        IdxDataset("mnist", "MNIST", md5={}).load(str(tmp_path), download=False)


def test_a_decompression_bomb_in_an_imagefolder_is_a_data_error(tmp_path):
    from PIL import Image

    from bench.data.folders import load_imagefolder

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / split / "a" / "ok.png")
    bomb = tmp_path / "train" / "a" / "bomb.png"
    # a real PNG whose header declares more than twice Pillow's pixel limit (an error, not a warning)
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2
    Image.new("1", (side, side)).save(bomb)
    with pytest.raises(DataError, match=f"{bomb}: cannot read the image"):
        load_imagefolder(str(tmp_path))


@pytest.mark.parametrize("verb", ["run", "report"])
def test_an_out_folder_that_is_a_file_is_refused_before_any_work(verb, tmp_path, write_suite, capsys):
    blocker = tmp_path / "notadir"
    blocker.write_text("")
    store = tmp_path / "store" / "mlflow.db"
    path = write_suite(tiny_suite())
    args = [str(path)] if verb == "run" else ["tiny"]
    where = ["--tracking-uri", f"sqlite:///{store}", "--out", str(blocker / "sub")]
    rc, lines = run_cli([verb, *args, *where], capsys)
    assert rc == 2 and lines == [f"--out: {blocker} is a file, not a folder"]
    assert not store.parent.exists()

