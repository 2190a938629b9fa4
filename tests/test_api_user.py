"""The Python API as a user with their own data meets it: `bench.run` refuses what `bench run`
refuses, before anything is written; `bench.evaluate` names the field of a bad request and refuses
generator output that the metrics would not score as made; image folders of 16-bit PNGs are read
at their levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_suite

import bench
from bench.cli import main
from bench.data import load_dataset
from bench.suite import SuiteError


def _small_data_suite() -> dict:
    """Five training images and a 10-nearest-neighbour metric: what `bench run` refuses (exit 2)."""
    return tiny_suite(
        name="small",
        dataset={"name": "synthetic", "train_size": 5, "test_size": 64},
        budget={"steps": 2, "batch_size": 4},
        eval={"metrics": ["recon_mse", "knn_acc"], "batch_size": 64},
        models=[{"name": "ae-mlp"}],
    )


def test_python_run_refuses_what_bench_run_refuses_before_writing(write_suite, tmp_path, capsys):
    path = write_suite(_small_data_suite())
    cli_db, api_db = tmp_path / "cli.db", tmp_path / "api.db"
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{cli_db}"]) == 2
    cli_error = capsys.readouterr().err.strip()
    assert cli_error.startswith(f"{path}: eval.metrics.1: knn_acc: the 10-nearest-neighbour")

    with pytest.raises(SuiteError) as e:
        bench.run(path, tracking_uri=f"sqlite:///{api_db}")
    assert str(e.value) == cli_error  # the same line, naming the file and the field
    assert [err.loc for err in e.value.errors] == ["eval.metrics.1"]
    assert not cli_db.exists() and not api_db.exists()  # no store, no run

    with pytest.raises(SuiteError, match=r"^<suite small>: eval\.metrics\.1: knn_acc"):
        bench.run(_small_data_suite(), tracking_uri=f"sqlite:///{api_db}")
    assert not api_db.exists()


def test_python_run_checks_the_report_folder_uri_and_device_first(write_suite, tmp_path):
    path = write_suite(tiny_suite(models=[{"name": "ae-mlp"}]))
    db = tmp_path / "api.db"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SuiteError, match=r": out: .*a-file is a file, not a folder"):
        bench.run(path, tracking_uri=f"sqlite:///{db}", out=blocker / "report")
    with pytest.raises(SuiteError, match=r": tracking\.uri: 'no-such:scheme' is not an MLflow tracking URI"):
        bench.run(path, tracking_uri="no-such:scheme")
    if not torch.cuda.is_available():
        with pytest.raises(SuiteError, match=r": device: 'cuda': this machine has no CUDA device"):
            bench.run(path, tracking_uri=f"sqlite:///{db}", device="cuda")
    assert not db.exists()  # nothing written: no store, no report folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "suite.yaml"]


def _images(value: float, dtype=torch.float32):
    return lambda z: torch.full((len(z), 1, 28, 28), value, dtype=dtype)


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        (
            lambda z: torch.rand(len(z), 1, 28, 28) * 2 - 1,
            r"values in \[-[\d.]+, [\d.]+\]; expected .*\[0, 1\]",  # .4g may round 0.99996 to 1
        ),
        (lambda z: torch.rand(len(z), 1, 28, 28) * 255, r"values in \[\d.*, 2\d\d\.?\d*\]; expected"),
        (_images(float("nan")), "NaN or infinite"),
        (_images(float("inf")), "NaN or infinite"),
    ],
)
def test_evaluate_refuses_generator_output_outside_0_1(generator, message):
    """The metrics clip samples to [0, 1]: a tanh generator would be scored as other images."""
    with pytest.raises(ValueError, match=message):
        bench.evaluate(generator, "synthetic", ["fid_domain"], n_samples=8, n_real=64)


def test_evaluate_scores_float_and_uint8_generators_alike():
    grey = bench.evaluate(_images(127 / 255), "synthetic", ["fid_domain"], n_samples=16, n_real=64)
    as_uint8 = bench.evaluate(_images(127, torch.uint8), "synthetic", ["fid_domain"], n_samples=16, n_real=64)
    assert np.isfinite(grey["fid_domain"].value)
    assert as_uint8["fid_domain"].value == pytest.approx(grey["fid_domain"].value, rel=1e-9)


@pytest.mark.parametrize(
    ("dataset", "options", "expected"),
    [
        ({"name": "synthetic", "rot": "x"}, {}, "bench.evaluate: dataset.rot: unknown key"),
        (
            {"name": "imagefolder", "channels": 2},
            {},
            "bench.evaluate: dataset.channels: Input should be 1 or 3",
        ),
        (
            "synthetc",
            {},
            "bench.evaluate: dataset.name: unknown dataset 'synthetc'; did you mean 'synthetic'",
        ),
        ("synthetic", {"n_reel": 5}, "bench.evaluate: eval.n_reel: unknown key"),
        ("synthetic", {"n_real": 0}, "bench.evaluate: eval.n_real: Input should be greater than"),
    ],
)
def test_evaluate_names_the_field_of_a_bad_request(dataset, options, expected):
    with pytest.raises(SuiteError) as e:
        bench.evaluate(_images(0.5), dataset, ["fid_domain"], n_samples=8, **options)
    assert str(e.value).startswith(expected)
    assert "\n" not in str(e.value)  # one line per problem, no pydantic dump


def test_evaluate_names_dataset_root_as_bench_validate_does(write_suite, tmp_path, capsys):
    """An image folder without root, or with a root that is no folder, is a bad request: a
    SuiteError naming dataset.root (before: a DataError), with the line `bench validate` prints."""
    path = write_suite(tiny_suite(dataset={"name": "imagefolder"}))
    assert main(["validate", str(path)]) == 2
    validate_line = capsys.readouterr().err.strip()
    assert validate_line.startswith(f"{path}: dataset.root: ")
    with pytest.raises(SuiteError) as e:
        bench.evaluate(_images(0.5), {"name": "imagefolder"}, ["fid_domain"], n_samples=8)
    assert str(e.value) == "bench.evaluate" + validate_line.removeprefix(str(path))
    assert [err.loc for err in e.value.errors] == ["dataset.root"]

    missing = tmp_path / "no-such-images"
    for root in (missing, path):  # nothing there; a file
        dataset = {"name": "imagefolder", "root": str(root)}
        with pytest.raises(SuiteError) as e:
            bench.evaluate(_images(0.5), dataset, ["fid_domain"], n_samples=8)
        assert str(e.value).startswith(f"bench.evaluate: dataset.root: {dataset['root']}: folder not found")
        assert [err.loc for err in e.value.errors] == ["dataset.root"]
    assert not missing.exists()


def test_evaluate_keeps_data_error_for_a_folder_whose_images_cannot_be_read(tmp_path):
    from bench.data import DataError

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot read the image"):
        bench.evaluate(_images(0.5), {"name": "imagefolder", "root": str(tmp_path)}, ["fid"], n_samples=8)


@pytest.mark.parametrize(
    ("dataset", "metrics", "options", "expected"),
    [
        ("synthetic", ["fid", "fid_domian"], {}, "bench.evaluate: eval.metrics.1: unknown metric 'fid_domi"),
        (
            {"name": "synthetic", "train_size": 64, "test_size": 64},
            ["is_domain"],
            {"isc_splits": 30},
            r"bench.evaluate: eval.metrics.0: is_domain: eval.isc_splits (30) is larger",
        ),
        (
            {"name": "synthetic", "train_size": 8, "test_size": 8},
            ["recon_mse", "knn_acc"],
            {},
            "bench.evaluate: eval.metrics.1: knn_acc: the 10-nearest-neighbour",
        ),
    ],
)
def test_evaluate_names_a_metric_by_its_eval_metrics_field(dataset, metrics, options, expected):
    """As a suite's metrics are named: eval.metrics.<i> (before: metrics.<i>)."""
    from bench.models import build_model

    model = build_model("ae-mlp", {}, (1, 28, 28))
    with pytest.raises(SuiteError) as e:
        bench.evaluate(model, dataset, metrics, n_samples=20, **options)
    assert str(e.value).startswith(expected)
    assert all(err.loc.startswith("eval.metrics.") for err in e.value.errors)


def test_sixteen_bit_pngs_are_scaled_to_eight_bits_not_clipped(tmp_path: Path):
    from PIL import Image

    levels = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(3):
            Image.fromarray(levels).save(tmp_path / split / f"{i}.png")
    assert Image.open(tmp_path / "train" / "0.png").mode.startswith("I")  # a 16-bit PNG indeed

    data = load_dataset("imagefolder", root=str(tmp_path))
    want = torch.from_numpy(np.rint(levels / 257.0).astype(np.uint8))
    assert data.image_shape == (1, 8, 8)
    assert torch.equal(data.train_x[0, 0], want) and torch.equal(data.test_x[2, 0], want)
    assert "16-bit images scaled to 8 bits" in data.source

    rgb = load_dataset("imagefolder", root=str(tmp_path), channels=3)
    assert torch.equal(rgb.train_x[0], want.expand(3, 8, 8))


def test_images_of_32_bit_integers_keep_their_8_bit_levels():
    """A PIL image of mode "I" (a torchvision dataset may hand one over) whose levels fit in 0..255
    holds 8-bit levels: kept, not scaled as 16-bit; one with larger levels is 16-bit, scaled."""
    from PIL import Image

    from bench.data.folders import _to_8bit

    eight = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32))
    assert eight.mode == "I"
    assert np.asarray(_to_8bit(eight)).tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    assert np.asarray(_to_8bit(wide)).tolist() == [[0, 128, 255]]


def test_a_gan_without_the_optional_n_critic_and_after_d_step_trains():
    """The model contract makes ``n_critic`` and ``after_d_step()`` optional for a GAN."""
    from torch import nn

    from bench.models import GenerativeModel, ModelParams
    from bench.train import AdversarialStep

    class MinimalGAN(GenerativeModel):
        family = "gan"

        def __init__(self, params, image_shape):
            super().__init__(params, image_shape)
            self.generator = nn.Sequential(nn.Linear(4, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4)))
            self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))

        def sample_z(self, n):
            return torch.randn(n, 4)

        def sample(self, n, generator=None):
            return self.generator(torch.randn(n, 4, generator=generator))

        def d_loss(self, x, z):
            real, fake = self.discriminator(x), self.discriminator(self.generator(z).detach())
            return {"loss": nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean()}

        def g_loss(self, z):
            return {"g_loss": nn.functional.softplus(-self.discriminator(self.generator(z))).mean()}

    torch.manual_seed(0)
    model = MinimalGAN(ModelParams(), (1, 4, 4))
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    step = AdversarialStep(model)
    for i in range(2):
        step(model, torch.rand(8, 1, 4, 4), i)
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))


class _TanhAE:
    """A user's autoencoder whose decoder ends in tanh: images in [-1, 1], not [0, 1]."""

    @staticmethod
    def build(shift: float = 0.0):
        from torch import nn

        from bench.models import GenerativeModel, ModelParams

        class TanhAE(GenerativeModel):
            family = "ae"

            def __init__(self, params, image_shape):
                super().__init__(params, image_shape)
                d = int(np.prod(image_shape))
                self.enc = nn.Sequential(nn.Flatten(), nn.Linear(d, 4))
                self.dec = nn.Sequential(nn.Linear(4, d), nn.Tanh(), nn.Unflatten(1, image_shape))

            def encode(self, x):
                return self.enc(x)

            def decode(self, z):
                return self.dec(z) + shift

            def sample(self, n, generator=None):
                return self.decode(torch.randn(n, 4, generator=generator))

            def loss(self, x):
                return {"loss": (self.decode(self.encode(x)) - x).pow(2).mean()}

        torch.manual_seed(0)
        return TanhAE(ModelParams(), (1, 28, 28))


@pytest.mark.parametrize(
    ("metric", "made_by"),
    [
        ("recon_mse", "TanhAE.decode"),
        ("denoise_psnr", "TanhAE.reconstruct"),
        ("fid_domain", "TanhAE.sample"),
        ("fid_domain_gmm", "TanhAE.decode"),
        ("fid_domain_rec", "TanhAE.reconstruct"),
    ],
)
def test_a_model_whose_images_leave_0_1_gets_no_score(metric, made_by):
    """Clipping a tanh output onto [0, 1] would score other images than the model makes: each
    metric that scores the model's images refuses them, naming the method that made them."""
    with pytest.raises(ValueError, match=rf"^{made_by} returned values in \[-[\d.]+, [\d.]+\]; expected"):
        bench.evaluate(_TanhAE.build(), "synthetic", [metric], n_samples=32, n_real=64, batch_size=16)


def test_a_model_in_0_1_is_scored_by_the_same_metrics():
    """The same network, its tanh kept within (-0.5, 0.5) and shifted by 0.5, is scored."""
    model = _TanhAE.build(shift=0.5)
    with torch.no_grad():  # small pre-activations: |tanh| < 0.5, so the images lie in (0, 1)
        model.dec[0].weight.mul_(0.01)
        model.dec[0].bias.mul_(0.01)
    metrics = ["recon_mse", "fid_domain"]
    r = bench.evaluate(model, "synthetic", metrics, n_samples=32, n_real=64, batch_size=16)
    assert np.isfinite(r["recon_mse"].value) and np.isfinite(r["fid_domain"].value)
