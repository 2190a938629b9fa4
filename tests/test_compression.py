"""Rates are measured bitstreams: codes decode exactly, the reported bits are the streams' lengths,
classical codecs behave as codecs, and a codec goes through the same run path as a model."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_suite
from PIL import Image

from bench.cli import main
from bench.config import EvalConfig
from bench.data import load_dataset
from bench.metrics import evaluate
from bench.metrics.coding import code_test_set, decode_symbols, encode_symbols, fit_categorical
from bench.models import build_model
from bench.report.figures import jpeg_comparison

SMALL = {"backbone": "mlp", "hidden": [32]}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=96, test_size=24)


def run(model, data, metrics, **cfg):
    return evaluate(model.eval(), data, EvalConfig(metrics=metrics, batch_size=16, **cfg), 0, CPU)


def test_ans_streams_decode_to_the_encoded_symbols():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 5, size=(200, 6))
    test = np.concatenate([rng.integers(0, 5, size=(30, 6)), np.full((1, 6), 6)])  # 6 never seen in training
    probs = fit_categorical(train, 0, 7)
    assert probs.shape == (6, 7) and np.allclose(probs.sum(1), 1) and (probs > 0).all()
    streams = encode_symbols(test, probs)
    assert np.array_equal(decode_symbols(streams, probs), test)
    # a symbol the training codes made likely costs fewer bits than one they never showed
    assert len(encode_symbols(np.zeros((1, 6), int), probs)[0]) <= len(streams[-1])


@pytest.mark.parametrize(
    "name,params", [("ae-mlp", {"latent_bits": 3, **SMALL}), ("vq-vae", {**SMALL, "num_codes": 16})]
)
def test_quantised_codes_are_coded_as_they_are_and_decode_exactly(data, name, params):
    torch.manual_seed(0)
    model = build_model(name, params, data.image_shape).eval()
    x = data.test_x.float() / 255
    with torch.no_grad():
        symbols, alphabet = model.code_symbols(x)
        train_symbols, _ = model.code_symbols(data.train_x.float() / 255)
        coded = code_test_set(model, data, data.test_x, None, 16, CPU)
        # the bits are the summed lengths of the streams, built here from the same pieces
        probs = fit_categorical(train_symbols.numpy(), 0, alphabet)
        streams = encode_symbols(symbols.numpy(), probs)
        assert np.array_equal(decode_symbols(streams, probs), symbols.numpy())
        assert coded.total_bits == sum(32 * len(s) for s in streams) and coded.header_bits == 0
        # reconstructions are decoded from the decoded symbols, and equal the model's own
        assert torch.allclose(coded.decoded, model.reconstruct(x).clamp(0, 1), atol=1e-5)
    res = run(model, data, ["bpp", "compression_ratio"])
    assert res["bpp"].value == pytest.approx(coded.total_bits / (24 * 28 * 28))
    assert res["compression_ratio"].value == pytest.approx(24 * 784 * 8 / coded.total_bits)


def test_float_codes_are_rated_and_reconstructed_through_the_code_step(data):
    torch.manual_seed(0)
    model = build_model("vae-mlp", {}, data.image_shape).eval()
    x = data.test_x.float() / 255
    coarse = run(model, data, ["bpp", "recon_mse", "rate_kl_bits"], code_step=0.5)
    fine = run(model, data, ["bpp", "recon_mse"], code_step=0.01)
    with torch.no_grad():
        z = torch.round(model.encode(x).double() / 0.5).float() * 0.5
        by_hand = ((model.decode(z) - x) ** 2).double().mean().item()
    assert coarse["recon_mse"].value == pytest.approx(by_hand, rel=1e-6)
    assert coarse["bpp"].provenance["code_step"] == 0.5 and coarse["bpp"].provenance["header_bits"] == 64
    # the distortion says it was measured on the decoded bitstreams, at which step; the KL rate does
    # not go through them
    recon_prov = coarse["recon_mse"].provenance
    assert recon_prov["code_step"] == 0.5 and "decoded_from" in recon_prov
    assert "decoded_from" not in coarse["rate_kl_bits"].provenance
    assert fine["bpp"].value > coarse["bpp"].value  # a finer quantiser costs more bits
    assert coarse["rate_kl_bits"].value > 0


def test_jpeg_psnr_and_bpp_rise_with_quality_and_png_is_lossless(data):
    metrics = ["recon_mse", "psnr", "bpp", "compression_ratio"]
    jpeg = [run(build_model("jpeg", {"quality": q}, data.image_shape), data, metrics) for q in (10, 50, 95)]
    assert jpeg[0]["psnr"].value < jpeg[1]["psnr"].value < jpeg[2]["psnr"].value
    assert jpeg[0]["bpp"].value < jpeg[1]["bpp"].value < jpeg[2]["bpp"].value
    png = run(build_model("png", {}, data.image_shape), data, metrics)
    assert png["recon_mse"].value == 0
    # bpp is the files' size: every test image saved by Pillow, headers and all
    sizes = []
    for img in data.test_x[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        sizes.append(8 * len(buf.getvalue()))
    assert png["bpp"].value == pytest.approx(sum(sizes) / (24 * 784))


def test_factorized_prior_bits_are_compressai_strings(data):
    torch.manual_seed(0)
    model = build_model("ae-factorized", {**SMALL, "lmbda": 0.1}, data.image_shape)
    model.eval()
    x = data.test_x.float() / 255
    with torch.no_grad():
        strings = model.compress(x)
        y_hat = model.entropy_bottleneck.decompress(strings, (1, 1)).flatten(1)
        assert torch.equal(y_hat, model.encode(x))  # decoded == encoded
        # its codes through the shared pass are the rounded ones, as encode gives them
        assert torch.equal(model.encode_with_symbols(x)[0], model.encode(x))
        res = run(model, data, ["bpp"])
    assert res["bpp"].value == pytest.approx(8 * sum(len(s) for s in strings) / (24 * 784))
    loss = model.train().loss(x)
    assert set(loss) == {"loss", "rec", "bits", "aux"} and loss["bits"] > 0


def test_coding_keeps_the_codes_of_the_trained_state(data, monkeypatch):
    """compress() rebuilds the entropy coder's CDF tables (integer buffers): the codes are the
    same, so the memo keeps them."""
    from bench.metrics.codes import train_codes

    model = build_model("ae-factorized", {**SMALL, "lmbda": 0.1}, data.image_shape).eval()
    codes = train_codes(model, data)
    with torch.no_grad():
        model.compress(data.test_x[:4].float() / 255)
    monkeypatch.setattr(model, "encode", lambda x: pytest.fail("encoded again"))
    assert train_codes(model, data) is codes


def test_a_codec_runs_through_the_same_path_with_no_training(tmp_path, write_suite, store):
    suite = tiny_suite(
        eval={"metrics": ["recon_mse", "psnr", "ssim", "bpp", "compression_ratio"], "batch_size": 64},
        models=[{"name": "png"}, {"name": "jpeg", "quality": 50}, {"name": "ae-mlp", "latent_bits": 4}],
    )
    out = tmp_path / "r"
    assert main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("label")
    assert (runs.status == "FINISHED").all()
    assert runs.loc["png", "budget_steps"] == 0 and runs.loc["jpeg", "budget_steps"] == 0
    assert runs.loc["ae-mlp", "budget_steps"] == 6
    assert runs.loc["png", "recon_mse"] == 0 and runs.loc["jpeg", "recon_mse"] > 0
    assert runs.bpp.nunique() == 3
    assert (out / "rate_distortion.png").exists()
    assert "JPEG" in (out / "report.md").read_text()


def test_which_models_beat_jpeg_at_equal_bpp():
    pts = pd.DataFrame(
        {
            "label": ["jpeg-a", "jpeg-b", "good", "bad", "tiny"],
            "model": ["jpeg", "jpeg", "m", "m", "m"],
            "bpp_mean": [2.0, 4.0, 3.0, 3.0, 0.5],
            "psnr_mean": [20.0, 30.0, 26.0, 24.0, 15.0],
        }
    )
    assert jpeg_comparison(pts) == {"beat": ["good"], "not": ["bad"], "below": ["tiny"]}
    assert jpeg_comparison(pts[pts.model != "jpeg"]) is None


@pytest.mark.parametrize(
    ("name", "params", "step"),
    [("vq-vae", {}, None), ("ae-mlp", {"latent_bits": 4}, None), ("ae-mlp", {}, 0.25)],
)
def test_each_split_is_encoded_once_for_the_probes_and_the_bitstreams(name, params, step):
    """Quantised codes (VQ indices, an AE's grid) and float codes rounded to eval.code_step: one
    evaluation passes each split through the encoder once, and every value equals the one that
    metric gets alone, from an encoding of its own."""
    from bench.metrics import samplers

    data = load_dataset("synthetic", train_size=300, test_size=120)
    torch.manual_seed(0)
    model = build_model(name, params, data.image_shape).eval()
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    metrics = ["recon_mse", "compression_ratio", "probe_acc", "knn_acc"]
    together = evaluate(model, data, EvalConfig(metrics=metrics, code_step=step), 0, torch.device("cpu"))
    assert set(together) == set(metrics)
    assert 300 + 120 <= sum(seen) <= 300 + 120 + 1  # (+1: one image tells whether codes are quantised)
    for m in metrics:
        samplers._FITS.clear()
        alone = evaluate(model, data, EvalConfig(metrics=[m], code_step=step), 0, torch.device("cpu"))
        assert alone[m].value == together[m].value
