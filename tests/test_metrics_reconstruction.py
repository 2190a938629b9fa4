"""Reconstruction metrics against values computed by hand, and their invariances."""

import math

import pytest
import torch

from bench.config import EvalConfig
from bench.data import load_dataset
from bench.metrics import METRICS, evaluate
from bench.models import build_model


class Shift(torch.nn.Module):
    """A fake autoencoder whose reconstruction is x + delta (clamped): known errors."""

    family = "ae"
    has_encoder = True

    def __init__(self, delta):
        super().__init__()
        self.delta = delta
        self.w = torch.nn.Parameter(torch.zeros(1))

    def reconstruct(self, x):
        return (x + self.delta).clamp(0, 1)

    def latent_bits(self):
        return 16 * 32


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=64, test_size=40)


def run(model, data, metrics, batch_size=500):
    return evaluate(model, data, EvalConfig(metrics=metrics, batch_size=batch_size), 0, torch.device("cpu"))


def test_recon_mse_and_psnr_by_hand(data):
    res = run(Shift(0.1), data, ["recon_mse", "psnr"])
    x = data.test_x.double() / 255
    err = ((x + 0.1).clamp(0, 1) - x) ** 2
    assert res["recon_mse"].value == pytest.approx(err.mean().item(), rel=1e-5)
    per_image = 10 * torch.log10(1 / err.flatten(1).mean(1))
    assert res["psnr"].value == pytest.approx(per_image.mean().item(), rel=1e-4)
    assert res["recon_mse"].provenance == {"split": "test", "n": 40, "pixel_range": "[0, 1]"}


def test_ssim_is_one_for_perfect_reconstruction_and_drops_with_error(data):
    perfect = run(Shift(0.0), data, ["ssim"])["ssim"].value
    worse = run(Shift(0.2), data, ["ssim"])["ssim"].value
    assert perfect == pytest.approx(1.0, abs=1e-5) and worse < 0.95


class Blur(Shift):
    """A fake autoencoder whose reconstruction differs from x by more than a constant: each pixel
    mixed with its right-hand neighbour, so SSIM varies from image to image."""

    def reconstruct(self, x):
        return (0.7 * x + 0.3 * torch.roll(x, 1, -1) + self.delta).clamp(0, 1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("values", [1 << 16, 5 * 28 * 28 * 3, 1])
def test_ssim_is_the_mean_of_torchmetrics_per_image_values(monkeypatch, channels, values):
    """Images are handed to torchmetrics side by side as the channels of one image, a run of
    SSIM_VALUES pixel values at a time (all 40 at once; runs of 5 or 15 with a short last run;
    one image a time): the result is still the mean of each image's own SSIM."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    import bench.metrics.reconstruction as reconstruction

    monkeypatch.setattr(reconstruction, "SSIM_VALUES", values)
    data = load_dataset("synthetic", train_size=64, test_size=40, channels=channels)
    model = Blur(0.02)
    x = data.test_x.float() / 255
    per_image = structural_similarity_index_measure(model.reconstruct(x), x, data_range=1.0, reduction="none")
    assert per_image.std() > 0.01  # the images' values differ, so a wrong weighting would show
    expected = per_image.double().mean().item()
    assert run(model, data, ["ssim"])["ssim"].value == pytest.approx(expected, rel=1e-6)


def test_metrics_do_not_depend_on_eval_batch_size(data):
    a = run(Shift(0.05), data, ["recon_mse", "psnr", "ssim"], batch_size=7)
    b = run(Shift(0.05), data, ["recon_mse", "psnr", "ssim"], batch_size=500)
    for k in a:
        assert a[k].value == pytest.approx(b[k].value, rel=1e-6)


def test_float_codes_have_no_rate_without_a_code_step(data):
    model = build_model("ae-mlp", {}, data.image_shape)
    assert run(model, data, ["bpp", "compression_ratio", "recon_mse"]).keys() == {"recon_mse"}


def test_metrics_that_do_not_apply_are_absent_not_zero(data):
    gan = build_model("gan-mlp", {}, data.image_shape)
    assert run(gan, data, ["recon_mse", "compression_ratio"]) == {}
    assert not METRICS.get("recon_mse").applies_to("gan")
    assert not math.isnan(run(Shift(0.1), data, ["recon_mse"])["recon_mse"].value)


def test_the_test_split_is_encoded_once_for_reconstructions_and_probes(data, monkeypatch):
    """A model reconstructing as decode(encode(x)) gets its test reconstructions from the codes the
    probes use: the same values as ``reconstruct``, one encoding of the test split."""
    model = build_model("vae-mlp", {}, data.image_shape).eval()
    x = data.test_x.float().div(255)
    with torch.inference_mode():
        expected = ((model.reconstruct(x).clamp(0, 1).double() - x.double()) ** 2).mean().item()
    encoded, encode = [], model.encode
    monkeypatch.setattr(model, "encode", lambda b: encoded.append(len(b)) or encode(b))
    res = run(model, data, ["recon_mse", "knn_acc"])
    assert res["recon_mse"].value == pytest.approx(expected, rel=1e-9)
    assert sum(encoded) == len(data.train_x) + len(data.test_x)
