"""dataset.binarize: dynamic binarisation for training, one fixed draw for evaluation, its own
content key, and the Bernoulli likelihood of binary pixels."""

import math

import pytest
import torch
from conftest import tiny_suite

from bench.config import DatasetConfig, EvalConfig
from bench.data import from_config, load_dataset
from bench.metrics import evaluate
from bench.models import build_model
from bench.suite import expand, load_suite


def test_binarised_splits_are_one_fixed_draw_of_the_grey_levels():
    grey = load_dataset("synthetic", train_size=256, test_size=64)
    a = from_config(DatasetConfig(name="synthetic", train_size=256, test_size=64, binarize=True))
    b = from_config(DatasetConfig(name="synthetic", train_size=256, test_size=64, binarize=True))
    for split in ("train_x", "test_x"):
        x = getattr(a, split)
        assert set(x.unique().tolist()) <= {0, 255}
        assert torch.equal(x, getattr(b, split))  # the same draw every time
        # a pixel is on about as often as its grey level says
        p = getattr(grey, split).double() / 255
        assert abs((x.double() / 255).mean().item() - p.mean().item()) < 0.01
    assert torch.equal(a.train_levels, grey.train_x)
    assert a.binarized and not grey.binarized
    assert a.checksum != grey.checksum  # caches (domain classifier, reference statistics) apart
    # a prefix of the binarised dataset is the binarised prefix: the reference set is cut from it
    assert torch.equal(a.train_x, a.complete.train_x[:256])


def test_training_batches_are_drawn_afresh_at_every_step():
    data = from_config(DatasetConfig(name="synthetic", train_size=256, binarize=True))
    idx = torch.arange(64)
    first, again = data.train_batch(idx, 5, 0), data.train_batch(idx, 5, 0)
    later = data.train_batch(idx, 6, 0)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, again)  # a pure function of (seed, step): resuming is exact
    assert not torch.equal(first, later)
    grey = load_dataset("synthetic", train_size=256)
    assert torch.equal(grey.train_batch(idx, 5, 0), grey.train_x[idx].float() / 255)


def test_binarize_enters_the_config_hash_only_when_set(write_suite):
    plain = expand(load_suite(write_suite(tiny_suite(), "plain.yaml")))[0]
    binary = tiny_suite()
    binary["dataset"]["binarize"] = True
    binary = expand(load_suite(write_suite(binary, "binary.yaml")))[0]
    assert "binarize" not in plain.resolved()["dataset"]
    assert binary.resolved()["dataset"]["binarize"] is True
    assert plain.config_hash != binary.config_hash


def test_the_likelihood_of_binary_pixels_is_the_bernoulli():
    data = from_config(DatasetConfig(name="synthetic", train_size=64, test_size=20, binarize=True))
    torch.manual_seed(0)
    m = build_model("vq-vae", {"backbone": "mlp", "hidden": [32], "num_codes": 16, "recon_loss": "bce"},
                    data.image_shape).eval()  # fmt: skip
    x = data.test_x.double() / 255
    with torch.no_grad():
        p = m.reconstruct(x.float()).double().clamp(1e-6, 1 - 1e-6)
    by_hand = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1) + 16 * math.log(16)
    res = evaluate(m, data, EvalConfig(metrics=["nll_nats"]), 0, torch.device("cpu"))["nll_nats"]
    assert res.value == pytest.approx(by_hand.mean().item(), rel=1e-9)
    assert res.provenance["data"] == "binarised pixels"
