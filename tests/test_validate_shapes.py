"""What the data's shape and labels decide, checked before anything runs: a model whose nets cannot
take the dataset's images, and a metric that needs class labels the data lacks, fail `bench
validate` (the shape wherever the suite alone gives it; both with `--data`) and `bench run`, exit 2
with the field named and nothing written, instead of failing at the first step or giving no value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_suite

import bench
from bench.cli import main
from bench.models import build_model
from bench.models.nets import ImageShapeError
from bench.suite import SuiteError


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    rc = main(args)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def write_folder(root: Path, side: int = 32, classes: tuple[str, ...] | None = ("a", "b"), n: int = 6):
    """``root/{train,test}/<class>/*.png`` (or the PNGs directly in the splits when ``classes`` is
    None): ``side`` x ``side`` greyscale images, the class its brightness."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for k, cls in enumerate(classes or (None,)):
            folder = root / split / cls if cls else root / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 150 * k
                px = torch.randint(base, base + 60, (side, side), generator=g, dtype=torch.uint8)
                Image.fromarray(px.numpy()).save(folder / f"{cls or 'x'}-{i}.png")
    return root


def folder_suite(root: Path, metrics: list[str], models: list[dict], **dataset) -> dict:
    return tiny_suite(
        dataset={"name": "imagefolder", "root": str(root), **dataset},
        budget={"steps": 2, "batch_size": 4},
        eval={"metrics": metrics, "batch_size": 8, "n_samples": 8, "n_real": 8, "kid_subset_size": 4},
        models=models,
    )


def nothing_written(tmp_path: Path, store: Path) -> bool:
    return not store.exists() and not (tmp_path / "rep").exists() and not (tmp_path / "mlruns").exists()


# --------------------------------------------------------------------------- backbones


@pytest.mark.parametrize(
    ("model", "params", "shape", "needs"),
    [
        ("ae-conv", {}, (1, 30, 30), "the infogan backbone needs H and W divisible by 4 (images are 30x30)"),
        ("vae-conv", {}, (3, 28, 30), "the infogan backbone needs H and W divisible by 4 (images are 28x30)"),
        ("dcgan", {}, (1, 2, 2), "the infogan backbone needs H and W divisible by 4 (images are 2x2)"),
        ("wgan-gp", {}, (3, 34, 34), "the infogan backbone needs H and W divisible by 4"),
        ("ae-conv", {"backbone": "dcgan"}, (3, 36, 36), "the dcgan backbone needs H and W divisible by 16"),
        ("lsgan", {"backbone": "dcgan"}, (1, 28, 28), "the dcgan backbone needs H and W divisible by 16"),
        ("vq-vae", {"backbone": "dcgan"}, (3, 8, 8), "the dcgan backbone needs H and W divisible by 16"),
    ],
)
def test_a_backbone_refuses_at_construction_a_shape_its_nets_cannot_take(model, params, shape, needs):
    """Before: the infogan nets built for 30x30 and failed at the first loss (28 vs 30), and a GAN
    on them trained on 30x30 images while sampling 28x28 ones."""
    with pytest.raises(ImageShapeError, match=needs.replace("(", r"\(").replace(")", r"\)")):
        build_model(model, params, shape)


@pytest.mark.parametrize(
    ("model", "params", "shape"),
    [
        ("ae-conv", {}, (1, 36, 36)),
        ("ae-conv", {}, (3, 28, 32)),
        ("dcgan", {}, (3, 4, 4)),
        ("ae-conv", {"backbone": "dcgan"}, (1, 16, 16)),
        ("wgan-gp", {"backbone": "dcgan", "d_batch_norm": False}, (3, 32, 32)),
        ("ae-mlp", {}, (3, 30, 30)),
        ("gan-mlp", {}, (1, 2, 2)),
    ],
)
def test_the_shapes_a_backbone_takes_train_and_give_images_of_that_shape(model, params, shape):
    torch.manual_seed(0)
    m = build_model(model, params, shape)
    x = torch.rand(4, *shape)
    if m.family == "gan":
        z = m.sample_z(4)
        m.d_loss(x, z)["loss"].backward()
        m.g_loss(z)["g_loss"].backward()
    else:
        m.loss(x)["loss"].backward()
        m.eval()
        assert m.reconstruct(x).shape == x.shape
    m.eval()
    assert m.sample(2).shape == (2, *shape)


def test_the_ghosh_nets_take_any_side():
    """Ghosh et al.'s nets pad to a multiple of 16 inside and crop back: no side to refuse."""
    for shape in [(1, 30, 30), (3, 28, 36), (1, 2, 2)]:
        with torch.device("meta"):
            m = build_model("ae-conv", {"backbone": "ghosh"}, shape)
        assert m.image_shape == shape


# --------------------------------------------------------------------------- validate and run: shapes


def test_validate_refuses_an_image_size_the_suite_gives_without_reading_data(write_suite, capsys):
    """`--set dataset.image_size=30` on synthetic data (1 channel): known without the data."""
    path = write_suite(tiny_suite(models=[{"name": "ae-conv"}, {"name": "ae-mlp"}, {"name": "dcgan"}]))
    rc, lines = run_cli(["validate", str(path), "--set", "dataset.image_size=30"], capsys)
    assert rc == 2
    assert lines == [
        f"{path}: models.0: ae-conv cannot be built for 30x30 images of 1 channel: the infogan backbone "
        "needs H and W divisible by 4 (images are 30x30); set dataset.image_size to a multiple of 4, or "
        "choose another backbone",
        f"{path}: models.2: dcgan cannot be built for 30x30 images of 1 channel: the infogan backbone "
        "needs H and W divisible by 4 (images are 30x30); set dataset.image_size to a multiple of 4, or "
        "choose another backbone",
    ]
    assert run_cli(["validate", str(path), "--set", "dataset.image_size=32"], capsys)[0] == 0


def test_validate_knows_the_fixed_shape_of_a_built_in_dataset(write_suite, capsys):
    """MNIST is 28x28 whether or not its files are here: the dcgan backbone (sides of 16) cannot be."""
    mnist = {"name": "mnist", "root": "/nowhere"}
    path = write_suite(tiny_suite(dataset=mnist, models=[{"name": "ae-conv"}]))
    dcgan = ["--set", "models.0.backbone=dcgan"]
    rc, lines = run_cli(["validate", str(path), *dcgan], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"{path}: models.0: ae-conv cannot be built for 28x28 images of 1 channel: ")
    assert "the dcgan backbone needs H and W divisible by 16" in lines[0]
    assert run_cli(["validate", str(path), *dcgan, "--set", "dataset.image_size=32"], capsys)[0] == 0


def test_validate_refuses_an_image_size_of_a_folder_whatever_its_channels(tmp_path, write_suite, capsys):
    """An image folder's channels are known only from its files; the sides from image_size."""
    root = write_folder(tmp_path / "images", side=32)
    path = write_suite(folder_suite(root, ["recon_mse"], [{"name": "ae-conv"}], image_size=30))
    for args in (["validate"], ["validate", "--data"]):
        rc, lines = run_cli([*args, str(path)], capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"{path}: models.0: ae-conv cannot be built for 30x30 images")
    assert run_cli(["validate", "--data", str(path), "--set", "dataset.image_size=28"], capsys)[0] == 0


def test_validate_data_and_run_refuse_images_a_model_cannot_take(tmp_path, write_suite, capsys):
    """A folder of 30x30 images without image_size: only the data gives the shape. Before: `bench
    validate --data` said ok and `bench run` failed at step 1 (exit 1, the run created)."""
    root = write_folder(tmp_path / "images", side=30)
    suite = folder_suite(root, ["recon_mse"], [{"name": "ae-mlp"}, {"name": "ae-conv"}])
    path = write_suite(suite)
    assert run_cli(["validate", str(path)], capsys)[0] == 0  # the shape is not known without the data
    rc, lines = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2
    expected = (
        f"{path}: models.1: ae-conv cannot be built for 30x30 images of 1 channel: the infogan backbone "
        "needs H and W divisible by 4 (images are 30x30)"
    )
    assert len(lines) == 1 and lines[0].startswith(expected), lines

    store = tmp_path / "store.db"
    run = ["run", str(path), "--tracking-uri", f"sqlite:///{store}", "--out", str(tmp_path / "rep")]
    rc, lines = run_cli(run, capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(expected), lines
    assert nothing_written(tmp_path, store)

    with pytest.raises(SuiteError) as e:  # the Python API: the same line, before any run exists
        bench.run(path, tracking_uri=f"sqlite:///{store}")
    assert [err.loc for err in e.value.errors] == ["models.1"]
    assert str(e.value).startswith(expected)
    assert nothing_written(tmp_path, store)


def test_the_dcgan_backbone_on_36x36_is_refused_by_run_not_at_build(tmp_path, write_suite, capsys):
    """Before: validate said ok, and `bench run` created the run and failed building it (exit 1)."""
    root = write_folder(tmp_path / "images", side=36)
    path = write_suite(folder_suite(root, ["recon_mse"], [{"name": "ae-conv"}]))
    store = tmp_path / "store.db"
    run = ["run", str(path), "--tracking-uri", f"sqlite:///{store}", "--set", "models.0.backbone=dcgan"]
    rc, lines = run_cli(run, capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: models.0: ae-conv cannot be built for 36x36 images of 1 channel: ")
    assert "the dcgan backbone needs H and W divisible by 16" in lines[0]
    assert nothing_written(tmp_path, store)


def test_a_plugin_model_that_refuses_a_shape_is_named_like_a_built_in_one(tmp_path, write_suite, capsys):
    """The contract: a model raising ``ImageShapeError`` in ``__init__`` is a ``models.<i>`` error."""
    lib = tmp_path / "lib" / "squareonly"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "models.py").write_text(
        "from bench.models import GenerativeModel, ModelParams\n"
        "from bench.models.nets import ImageShapeError\n\n\n"
        "class Only32(GenerativeModel):\n"
        "    family = 'vae'\n"
        "    Params = ModelParams\n\n"
        "    def __init__(self, params, image_shape):\n"
        "        super().__init__(params, image_shape)\n"
        "        if image_shape[1:] != (32, 32):\n"
        "            raise ImageShapeError(f'Only32 takes 32x32 images, not {image_shape[1]}')\n\n"
        "    def loss(self, x):\n"
        "        raise NotImplementedError\n\n"
        "    def sample(self, n, generator=None):\n"
        "        raise NotImplementedError\n"
    )
    models = [{"name": "squareonly.models:Only32"}]
    path = write_suite(tiny_suite(models=models, plugins=["lib"], eval={"metrics": ["fid"]}))
    rc, lines = run_cli(["validate", str(path)], capsys)
    assert rc == 2
    assert lines == [
        f"{path}: models.0: squareonly.models:Only32 cannot be built for 28x28 images of 1 channel: "
        "Only32 takes 32x32 images, not 28"
    ]
    assert run_cli(["validate", str(path), "--set", "dataset.image_size=32"], capsys)[0] == 0


def test_the_fixed_shape_validate_assumes_is_the_loader_s():
    from bench.data import load_dataset
    from bench.suite import FIXED_SHAPES

    assert load_dataset("synthetic", train_size=4, test_size=4).image_shape == FIXED_SHAPES["synthetic"]
    assert FIXED_SHAPES["mnist"] == FIXED_SHAPES["fashion-mnist"] == (1, 28, 28)


# --------------------------------------------------------------------------- labels


def test_metrics_that_need_labels_on_a_folder_without_classes_are_errors(tmp_path, write_suite, capsys):
    """Before: validate --data said ok and `bench run` exited 0 with no value and no n/a cell."""
    root = write_folder(tmp_path / "flat", classes=None)
    metrics = ["fid_domain", "kid_domain"]
    path = write_suite(folder_suite(root, metrics, [{"name": "gan-mlp"}]))
    assert run_cli(["validate", str(path)], capsys)[0] == 0  # labels are only known from the data
    rc, lines = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2
    assert lines == [
        f"{path}: eval.metrics.{i}: {m} needs class labels of two classes or more and the data has no "
        "class labels (an image folder's labels are its class subfolders): it could never have a value"
        for i, m in enumerate(metrics)
    ]
    store = tmp_path / "store.db"
    run = ["run", str(path), "--tracking-uri", f"sqlite:///{store}", "--out", str(tmp_path / "rep")]
    assert run_cli(run, capsys) == (2, lines)
    assert nothing_written(tmp_path, store)
    with pytest.raises(SuiteError) as e:
        bench.run(path, tracking_uri=f"sqlite:///{store}")
    assert [err.loc for err in e.value.errors] == ["eval.metrics.0", "eval.metrics.1"]
    assert nothing_written(tmp_path, store)


def test_one_label_metric_among_others_and_a_single_class(tmp_path, write_suite, capsys):
    flat = write_folder(tmp_path / "flat", classes=None)
    path = write_suite(folder_suite(flat, ["recon_mse", "knn_acc", "fid_domain"], [{"name": "ae-mlp"}]))
    rc, lines = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2 and [line.split(": ")[1] for line in lines] == ["eval.metrics.1", "eval.metrics.2"]
    assert "knn_acc needs class labels" in lines[0] and "fid_domain needs class labels" in lines[1]

    one = write_folder(tmp_path / "one", classes=("only",))
    path = write_suite(folder_suite(one, ["recon_mse", "probe_acc"], [{"name": "ae-mlp"}]), "one.yaml")
    rc, lines = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"{path}: eval.metrics.1: probe_acc needs class labels of two classes or more "
                               "and the data has a single class")  # fmt: skip


def test_a_labelled_folder_takes_the_label_metrics(tmp_path, write_suite, capsys):
    labelled = write_folder(tmp_path / "labelled")
    path = write_suite(folder_suite(labelled, ["knn_acc", "fid_domain"], [{"name": "ae-mlp"}]))
    assert run_cli(["validate", "--data", str(path)], capsys)[0] == 0


def test_every_shipped_suite_stays_valid(capsys):
    suites = sorted((Path(__file__).parent.parent / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        assert run_cli(["validate", str(path)], capsys) == (0, []), path


def test_bench_eval_of_a_stored_run_s_own_label_metrics_leaves_them_n_a(tmp_path, write_suite, capsys):
    """A run stored before label metrics on unlabelled data were refused asks for them in its
    config.json: `bench eval RUN` evaluates the rest (those stay n/a, as they were); naming them
    with --metrics is refused."""
    import json
    from urllib.parse import unquote, urlparse

    from mlflow import MlflowClient

    flat = write_folder(tmp_path / "flat", classes=None)
    path = write_suite(folder_suite(flat, ["recon_mse"], [{"name": "ae-mlp"}]))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert run_cli(["run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "rep")], capsys)[0] == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny").experiment_id
    (run,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    config = Path(unquote(urlparse(run.info.artifact_uri).path)) / "config.json"
    doc = json.loads(config.read_text())
    doc["eval"]["metrics"] = ["recon_mse", "probe_acc"]  # as an earlier version stored it
    config.write_text(json.dumps(doc))
    rc, lines = run_cli(["eval", run.info.run_id, "--tracking-uri", uri], capsys)
    assert rc == 0, lines
    assert "probe_acc" not in client.get_run(run.info.run_id).data.metrics
    rc, lines = run_cli(["eval", run.info.run_id, "--metrics", "probe_acc", "--tracking-uri", uri], capsys)
    assert rc == 2 and "probe_acc needs class labels" in lines[0], lines
