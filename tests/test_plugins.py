"""Bring your own model and data: a plugin class from the user's folder and a PNG image folder run
through `bench validate | run | eval | report`, resume, `bench.run` and `bench.evaluate` (offline,
tiny budgets, real MLflow store)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from plugin_fixtures import write_images, write_plugin

import bench
from bench.cli import main
from bench.data import DataError, load_dataset
from bench.suite import expand, load_suite

PLUGIN = "myplugins.models:TinyVAE"
EVAL = {
    "metrics": ["recon_mse", "psnr", "probe_acc", "fid_domain"],
    "batch_size": 64,
    "n_samples": 32,  # every test image: the reference row's held-out set
    "n_real": 80,  # every training image
    "reference_split": "train",
}


def suite_dict(images: Path, models: list[dict], **over) -> dict:
    suite = {
        "name": "mine",
        "dataset": {"name": "imagefolder", "root": str(images)},
        "budget": {"steps": 4, "batch_size": 16},
        "seeds": [0],
        "device": "cpu",
        "plugins": ["lib"],
        "eval": EVAL,
        "models": models,
        "tracking": {"log_every": 2},
        "checkpoint": {"every": None},
    }
    suite.update(over)
    return suite


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """The user's folder: images/, lib/myplugins/models.py, suite.yaml; then `bench run` once."""
    root = tmp_path_factory.mktemp("project")
    write_images(root / "images")
    plugin = write_plugin(root / "lib")
    models = [{"name": PLUGIN, "label": "tiny", "latent_dim": 4}, {"name": "dcgan"}]
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(suite_dict(root / "images", models), sort_keys=False))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["validate", str(suite)]) == 0
    assert main(["run", str(suite), "--tracking-uri", uri, "--out", str(root / "rep")]) == 0
    return {"root": root, "suite": suite, "uri": uri, "plugin": plugin}


def model_runs(uri: str) -> list:
    from bench.store.tracking import Tracker

    return Tracker(uri).runs("mine")


def test_plugin_and_image_folder_run_evaluate_report_and_resume(project, capsys):
    root, uri = project["root"], project["uri"]
    results = pd.read_csv(root / "rep" / "results.csv")
    assert list(results.label) == ["tiny", "dcgan", "real data (reference)"]
    tiny = results[results.label == "tiny"].iloc[0]
    assert (
        tiny.family == "vae" and np.isfinite(tiny["recon_mse_mean"]) and np.isfinite(tiny["fid_domain_mean"])
    )
    assert np.isfinite(tiny["probe_acc_mean"])  # class subfolders gave labels
    assert np.isnan(results[results.label == "dcgan"].iloc[0]["recon_mse_mean"])  # a GAN: n/a

    runs = model_runs(uri)
    from bench.store.tracking import Tracker

    tracker = Tracker(uri)
    tiny_run = next(r for r in runs if r.data.tags["label"] == "tiny")
    config = json.loads(tracker.download(tiny_run.info.run_id, "config.json", root).read_text())
    assert (
        config["plugin"]["sha256"] == __import__("hashlib").sha256(project["plugin"].read_bytes()).hexdigest()
    )
    assert config["plugin"]["file"] == str(project["plugin"].resolve())
    assert config["dataset"]["name"] == "imagefolder"

    # bench eval rebuilds the plugin model from the store, importing it from the folder the user names
    capsys.readouterr()
    assert main(["eval", "mine", "--metrics", "ssim", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"add --plugins {root / 'lib'}" in err
    assert "ssim" not in tracker.run(tiny_run.info.run_id).data.metrics
    lib = ["--plugins", str(root / "lib")]
    assert main(["eval", "mine", "--metrics", "ssim", "--tracking-uri", uri, *lib]) == 0
    assert "ssim" in tracker.run(tiny_run.info.run_id).data.metrics

    assert main(["report", "mine", "--tracking-uri", uri, "--out", str(root / "rep2")]) == 0
    assert (root / "rep2" / "report.html").is_file()

    capsys.readouterr()
    assert main(["list", "--suite", str(project["suite"])]) == 0
    assert (
        f"{PLUGIN}  vae  A small MLP VAE from the user's own folder.  [from {project['plugin'].resolve()}"
        in (capsys.readouterr().out)
    )

    # resume: the same command again trains nothing
    capsys.readouterr()
    assert main(["run", str(project["suite"]), "--tracking-uri", uri, "--out", str(root / "rep3")]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert len(model_runs(uri)) == len(runs)


def test_python_run_returns_the_numbers_of_results_csv(project):
    table = bench.run(project["suite"], tracking_uri=project["uri"])  # every run finished: all skipped
    out = project["root"] / "rep-api"
    assert main(["report", "mine", "--tracking-uri", project["uri"], "--out", str(out)]) == 0
    csv = pd.read_csv(out / "results.csv")
    assert list(table.label) == list(csv.label) == ["tiny", "dcgan", "real data (reference)"]
    numeric = [c for c in csv.columns if pd.api.types.is_numeric_dtype(csv[c])]
    assert "recon_mse_mean" in numeric and "fid_domain_mean" in numeric
    np.testing.assert_allclose(table[numeric].to_numpy(float), csv[numeric].to_numpy(float), rtol=1e-12)


def test_python_evaluate_of_real_images_scores_the_reference_row(project):
    images = project["root"] / "images"
    data = load_dataset("imagefolder", root=str(images))
    served = {"n": 0}

    def real_test_images(z: torch.Tensor) -> torch.Tensor:  # noise in, the next real test images out
        x = data.test_x[served["n"] : served["n"] + len(z)]
        served["n"] += len(z)
        return x

    dataset = {"name": "imagefolder", "root": str(images)}
    opts = {k: v for k, v in EVAL.items() if k not in ("metrics", "n_samples")}
    results = bench.evaluate(real_test_images, dataset=dataset, metrics=["fid_domain"], n_samples=32, **opts)
    reference = pd.read_csv(project["root"] / "rep" / "reference.csv").iloc[0]
    assert results["fid_domain"].value == pytest.approx(reference["fid_domain"], rel=1e-6)
    assert results["fid_domain"].provenance["dataset_checksum"] == data.checksum
    assert served["n"] == 32

    # asked to, it logs the values and their provenance to MLflow, as a run of its own
    from bench.store.tracking import Tracker

    served["n"] = 0
    again = bench.evaluate(
        real_test_images, dataset, ["fid_domain"], n_samples=32, tracking_uri=project["uri"], **opts
    )
    (logged,) = Tracker(project["uri"]).runs("evaluate", kind="evaluation")
    assert logged.data.metrics["fid_domain"] == pytest.approx(again["fid_domain"].value)
    assert logged.data.tags["label"] == "real_test_images"
    # with what it cost, as `bench run` logs it: the whole evaluation and each metric's share
    seconds = logged.data.metrics
    assert 0 < seconds["eval_seconds.fid_domain"] <= seconds["eval_seconds"]
    assert "eval_seconds.latent_fit" not in seconds  # a generator fits no latent sampler


def test_an_edited_plugin_is_a_new_run_and_builtin_hashes_do_not_move(project, tmp_path):
    before = {s.label: s.config_hash for s in expand(load_suite(project["suite"]))}
    plugin = project["plugin"]
    text = plugin.read_text()
    try:
        plugin.write_text(text + "\n# tuned\n")
        after = {s.label: s.config_hash for s in expand(load_suite(project["suite"]))}
    finally:
        plugin.write_text(text)
    assert after["tiny"] != before["tiny"]
    assert after["dcgan"] == before["dcgan"]


def test_a_stored_run_chooses_no_code_to_run(project, tmp_path, capsys):
    """The run's config.json and model/spec.json name its plugin's module and folders. Edited to
    name a module of their own, in the run's own artifact folder: bench eval and bench sample
    import nothing from there, with or without --plugins."""
    uri, lib = project["uri"], str(project["root"] / "lib")
    tiny = next(r for r in model_runs(uri) if r.data.tags["label"] == "tiny")
    run_id = tiny.info.run_id
    artifacts = Path(tiny.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "config.json").is_file()  # a local artifact store
    marker = tmp_path / "ran"
    kept = {name: (artifacts / name).read_text() for name in ("config.json", "model/spec.json")}
    try:
        (artifacts / "evil.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nfrom myplugins.models import TinyVAE\n\n\n"
            "class M(TinyVAE):\n    pass\n"
        )
        for name, text in kept.items():
            doc = json.loads(text)
            doc["model"] = "evil:M"
            if "plugin" in doc:
                doc["plugin"]["paths"] = [str(artifacts)]
            else:
                doc["plugin_paths"] = [str(artifacts)]
            (artifacts / name).write_text(json.dumps(doc))
        out = tmp_path / "s.png"
        for plugins in ([], ["--plugins", lib], ["--plugins", str(artifacts)]):
            capsys.readouterr()
            assert main(["eval", run_id, "--metrics", "psnr", "--tracking-uri", uri, *plugins]) == 2, plugins
            assert main(["sample", run_id, "-o", str(out), "--tracking-uri", uri, *plugins]) == 2
            err = capsys.readouterr().err
            assert f"run {run_id} (tiny/seed0): " in err, err
            if plugins != ["--plugins", str(artifacts)]:
                assert not marker.exists() and not out.exists(), (plugins, err)
        # a folder the user names is the user's code: imported, and refused for its source
        assert "the run was trained with" in err and not out.exists()
    finally:
        for name, text in kept.items():
            (artifacts / name).write_text(text)
        (artifacts / "evil.py").unlink(missing_ok=True)


def test_bench_eval_refuses_a_plugin_edited_since_its_run(project, tmp_path, capsys):
    """The class's source must have the sha256 the run recorded: else the metrics logged into the
    run would be another model's."""
    import shutil

    uri = project["uri"]
    tiny = next(r for r in model_runs(uri) if r.data.tags["label"] == "tiny")
    edited = tmp_path / "lib"
    shutil.copytree(project["root"] / "lib", edited)
    models = edited / "myplugins" / "models.py"
    models.write_text(models.read_text() + "\n# tuned since\n")
    before = dict(tiny.data.metrics)
    out = tmp_path / "s.png"
    run_id = tiny.info.run_id
    for cmd in (["eval", run_id, "--metrics", "psnr"], ["sample", run_id, "-o", str(out)]):
        capsys.readouterr()
        assert main([*cmd, "--tracking-uri", uri, "--plugins", str(edited)]) == 2
        err = capsys.readouterr().err
        assert f"its source {models.resolve()} has sha256" in err and "the run was trained with" in err, err
    assert not out.exists() and dict(next(
        r for r in model_runs(uri) if r.info.run_id == tiny.info.run_id
    ).data.metrics) == before
    # the source it was trained with: drawn from
    assert main(["sample", tiny.info.run_id, "-o", str(out), "--tracking-uri", uri,
                 "--plugins", str(project["root"] / "lib")]) == 0  # fmt: skip
    assert out.is_file()


def test_builtin_config_hash_ignores_the_new_dataset_keys(write_suite):
    """A built-in suite's run hash is what it was before plugins and image_size/channels existed."""
    from conftest import hash_as_recorded_before, tiny_suite

    spec = expand(load_suite(write_suite(tiny_suite())))[0]
    assert spec.config_hash == hash_as_recorded_before(spec)


@pytest.mark.parametrize(
    "name, with_decode, metrics, expect",
    [
        ("myplugins.models:Missing", True, ["recon_mse"], "has no class 'Missing'"),
        (
            "myplugins.models:NotAModel",
            True,
            ["recon_mse"],
            "not a model: subclass bench.models.GenerativeModel",
        ),
        (
            PLUGIN,
            False,
            ["recon_mse", "fid_gmm"],
            "has no method decode(), which eval.metrics fid_gmm need",
        ),
        (
            PLUGIN,
            False,
            ["psnr"],
            "no method reconstruct() (nor encode() and decode()), which eval.metrics psnr",
        ),
        ("nowhere.models:TinyVAE", True, ["recon_mse"], "cannot import module 'nowhere.models'"),
    ],
)
def test_a_broken_plugin_is_refused_before_anything_is_written(
    tmp_path, capsys, name, with_decode, metrics, expect
):
    """The module has the same name as the working plugin of other tests: each suite imports its own."""
    write_images(tmp_path / "images", n_train=2, n_test=2)
    plugin = write_plugin(tmp_path / "lib", with_decode=with_decode)
    suite = tmp_path / "suite.yaml"
    models = [{"name": name, "latent_dim": 4}]
    suite.write_text(yaml.safe_dump(suite_dict(tmp_path / "images", models, eval={"metrics": metrics})))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}: models.0.name: {name}: " in err and expect in err
    if "import" not in expect:
        assert str(plugin.resolve()) in err  # the plugin's file is named
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(suite), "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no report


def test_plugin_params_are_validated_like_builtin_ones(tmp_path, capsys):
    write_images(tmp_path / "images", n_train=2, n_test=2)
    write_plugin(tmp_path / "lib", package="paramplugins")
    models = [{"name": "paramplugins.models:TinyVAE", "latent_dim": 0, "colour": "red"}]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(suite_dict(tmp_path / "images", models, eval={"metrics": ["recon_mse"]})))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "models.0.latent_dim: Input should be greater than or equal to 1" in err
    assert "models.0.colour: unknown key" in err
    suite.write_text(yaml.safe_dump(suite_dict(tmp_path / "images", models, plugins=["lib", "nowhere"])))
    assert main(["validate", str(suite)]) == 2
    assert f"plugins.1: 'nowhere': no such folder (relative to {tmp_path})" in capsys.readouterr().err


def test_entry_point_models_are_listed_with_their_origin_and_resolve(tmp_path, monkeypatch, capsys):
    write_plugin(tmp_path, package="epplugins")
    dist = tmp_path / "epplugins-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epplugins\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[bench.models]\ntiny-ep = epplugins.models:TinyVAE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "tiny-ep" in ln)
    assert "vae" in line and "entry point tiny-ep = epplugins.models:TinyVAE (epplugins 1.2)" in line

    from bench.models import build_model

    model = build_model("tiny-ep", {"latent_dim": 3}, (3, 8, 8))
    assert model.sample(2).shape == (2, 3, 8, 8)


# --------------------------------------------------------------------------- data


def test_image_folder_without_classes_has_no_labels_and_label_metrics_are_na(tmp_path):
    write_images(tmp_path, n_train=6, n_test=4, labelled=False)
    data = load_dataset("imagefolder", root=str(tmp_path))
    assert not data.has_labels and data.image_shape == (3, 32, 32) and len(data.train_x) == 12
    assert (data.train_y == -1).all()

    from bench.models import build_model

    model = build_model("ae-mlp", {}, data.image_shape)
    results = bench.evaluate(model, dataset=data, metrics=["recon_mse", "probe_acc", "knn_acc"], n_samples=8)
    assert set(results) == {"recon_mse"}  # probe and kNN need labels: n/a


def test_image_size_and_channels_convert_on_load_and_are_recorded(tmp_path):
    write_images(tmp_path, n_train=3, n_test=2)
    colour = load_dataset("imagefolder", root=str(tmp_path))
    grey = load_dataset("imagefolder", root=str(tmp_path), image_size=16, channels=1)
    assert colour.image_shape == (3, 32, 32) and colour.train_x.dtype == torch.uint8
    assert grey.image_shape == (1, 16, 16) and grey.train_x.dtype == torch.uint8
    assert grey.checksum != colour.checksum and grey.num_classes == 2
    assert "greyscale" in grey.source and "resized to 16" in grey.source
    # the same conversion for a built-in dataset: synthetic 28x28 grey -> 32x32 RGB
    syn = load_dataset("synthetic", train_size=8, test_size=4, image_size=32, channels=3)
    assert syn.image_shape == (3, 32, 32) and torch.equal(syn.train_x[:, 0], syn.train_x[:, 2])


def test_image_folder_problems_name_the_file(tmp_path):
    write_images(tmp_path, n_train=2, n_test=1)
    with pytest.raises(DataError, match="nowhere: folder not found"):
        load_dataset("imagefolder", root=str(tmp_path / "nowhere"))
    bad = tmp_path / "test" / "circle" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot read the image"):
        load_dataset("imagefolder", root=str(tmp_path))


class _FakeSet(torch.utils.data.Dataset):
    """A torchvision-style dataset whose files exist only when ``present``."""

    present = False

    def __init__(self, root, train=True, download=False, transform=None):
        if not self.present:
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        from PIL import Image

        g = torch.Generator().manual_seed(int(train))
        self.images = [
            Image.fromarray(torch.randint(0, 256, (12, 12, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(5 if train else 3)
        ]
        self.targets = [i % 2 for i in range(len(self.images))]
        self.classes = ["a", "b"]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_torchvision_datasets_offline_say_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FakeSet", _FakeSet, raising=False)
    with pytest.raises(DataError, match=f"not in {tmp_path} and could not be downloaded"):
        load_dataset("torchvision:FakeSet", root=str(tmp_path))
    with pytest.raises(DataError, match="could not be downloaded"):
        load_dataset("torchvision:FakeSet", root=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()  # nothing written
    monkeypatch.setattr(_FakeSet, "present", True)
    data = load_dataset("torchvision:FakeSet", root=str(tmp_path), image_size=8)
    assert data.name == "torchvision:FakeSet" and data.image_shape == (3, 8, 8)
    assert len(data.train_x) == 5 and len(data.test_x) == 3 and data.num_classes == 2


def test_validate_names_unknown_torchvision_and_missing_root(write_suite, capsys):
    from conftest import tiny_suite

    path = write_suite(tiny_suite(dataset={"name": "imagefolder"}))
    assert main(["validate", str(path)]) == 2
    assert "dataset.root: an imagefolder dataset needs root" in capsys.readouterr().err
    path = write_suite(tiny_suite(dataset={"name": "torchvision:CIFAR-10"}))
    assert main(["validate", str(path)]) == 2
    assert (
        "dataset.name: 'torchvision:CIFAR-10': expected torchvision:<dataset class>"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize(
    "name, params", [("ae-conv", {}), ("vae-conv", {"backbone": "dcgan"}), ("dcgan", {"backbone": "dcgan"})]
)
def test_conv_backbones_build_for_colour_images(shape, name, params):
    from bench.models import build_model

    model = build_model(name, params, shape)
    x = torch.rand(2, *shape)
    if model.family == "gan":
        assert torch.isfinite(model.d_loss(x, model.sample_z(2))["loss"])
    else:
        assert model.reconstruct(x).shape == x.shape
    assert model.sample(2).shape == (2, *shape)


def test_a_plugin_that_exits_on_import_is_refused_and_no_bytecode_is_left(tmp_path, monkeypatch, capsys):
    """sys.exit() in the user's module is a plugin error (exit 2), not bench's own exit 0; and a
    rejected suite leaves no __pycache__ beside the user's files, whatever the environment sets."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    write_images(tmp_path / "images", n_train=2, n_test=2)
    (tmp_path / "lib").mkdir()
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "notamodel.py").write_text("class Foo:\n    pass\n")
    for name, expect in (("exits:Foo", "the module called sys.exit(0)"), ("notamodel:Foo", "notamodel:Foo")):
        suite = tmp_path / "suite.yaml"
        spec = suite_dict(tmp_path / "images", [{"name": name}], eval={"metrics": ["recon_mse"]})
        suite.write_text(yaml.safe_dump(spec))
        assert main(["validate", str(suite)]) == 2
        err = capsys.readouterr().err
        assert f"{suite}: models.0.name: " in err and expect in err, err
    assert not (tmp_path / "__pycache__").exists()
    assert sys.dont_write_bytecode is False  # restored after the import


def test_a_plugin_without_a_docstring_of_its_own_has_no_description(tmp_path):
    """`bench list` describes a plugin by its class's first docstring line: not by the docstring
    of bench's GenerativeModel, which a class without one inherits."""
    from bench.models.plugins import resolve

    write_plugin(tmp_path / "lib", package="undocumented")
    (tmp_path / "lib" / "undocumented" / "bare.py").write_text(
        "from undocumented.models import TinyVAE\n\n\nclass Bare(TinyVAE):\n    pass\n"
    )
    paths = [str(tmp_path / "lib")]
    documented = resolve("undocumented.models:TinyVAE", paths)
    assert documented.description == "A small MLP VAE from the user's own folder."
    assert resolve("undocumented.bare:Bare", paths).description == ""


def test_a_namespace_folder_named_by_plugins_does_not_let_a_package_elsewhere_be_imported(
    tmp_path, monkeypatch
):
    """A folder without __init__.py in a --plugins folder is a namespace portion: Python's import
    takes a regular package of the same name from anywhere on sys.path instead. A stored run naming
    that module is refused before anything is imported, as is one naming bench's own modules or an
    installed package's."""
    from bench.run.reeval import BadRequest, StoredRun, plugin_folders

    (tmp_path / "mine" / "shadow").mkdir(parents=True)  # e.g. a tests/ folder without __init__.py
    elsewhere = tmp_path / "elsewhere" / "shadow"
    elsewhere.mkdir(parents=True)
    marker = tmp_path / "ran"
    (elsewhere / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))

    def run(model: str) -> StoredRun:
        return StoredRun("r1", "x/seed0", {"model": model}, 0, {}, {}, None)

    with pytest.raises(BadRequest, match=f"importing shadow would take {elsewhere / '__init__.py'}"):
        plugin_folders(run("shadow:Model"), "shadow:Model", [str(tmp_path / "mine")])
    (tmp_path / "mine" / "bench").mkdir()
    (tmp_path / "mine" / "bench" / "models.py").write_text("")
    (tmp_path / "mine" / "json.py").write_text("")
    for name in ("bench.models:GenerativeModel", "json:JSONDecoder"):
        with pytest.raises(BadRequest, match=f"the name {name.split('.')[0].split(':')[0]} is that of"):
            plugin_folders(run(name), name, [str(tmp_path / "mine")])
    assert not marker.exists()
