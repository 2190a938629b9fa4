"""The real-data reference row is a floor: the domain classifier never trains on the images it
scores as real, an exact autoencoder's ``_rec`` score is the row itself, and the ex-post GMM
decodes only codes the model can store."""

from dataclasses import replace

import pytest
import torch

from bench.config import EvalConfig
from bench.data import load_dataset
from bench.metrics import evaluate
from bench.metrics.domain import TrainConfig, classifier_start, train_classifier
from bench.metrics.generative import GenerationEval, generation_metric
from bench.metrics.samplers import draw, fit_latent_sampler
from bench.models import build_model

CPU = torch.device("cpu")
SYNTHETIC = {"train_size": 1024, "test_size": 512}  # as test_metrics_generative: one classifier


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", **SYNTHETIC)


def cfg(metrics, **kw) -> EvalConfig:
    base = {"n_samples": 400, "n_real": 400, "batch_size": 500}
    return EvalConfig(metrics=metrics, **{**base, **kw})


class Identity(torch.nn.Module):
    """An exact "autoencoder": its reconstruction is its input."""

    family = "ae"
    has_encoder = True

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def reconstruct(self, x):
        return x


def test_the_domain_classifier_never_trains_on_the_first_half_of_the_training_split(data):
    # labels no classifier can take: any of these images in a training batch raises
    first = classifier_start(len(data.train_x))
    bad = data.train_y.clone()
    bad[:first] = data.num_classes + 5
    state, acc = train_classifier(replace(data, train_y=bad), TrainConfig(epochs=1, min_steps=20), CPU)
    assert acc > 0.2  # it learned from the second half (ten classes: chance is 0.1)


@pytest.mark.parametrize("reference_split", ["test", "train"])
def test_reference_and_held_out_images_come_from_the_half_the_classifier_never_saw(data, reference_split):
    c = cfg(["fid_domain_rec"], n_samples=5000, n_real=5000, reference_split=reference_split)
    gen = GenerationEval(data, c, 0, CPU)
    train_side = gen.reference if reference_split == "train" else gen.heldout
    assert train_side.split == "train" and train_side.n == classifier_start(len(data.train_x)) == 512
    r = evaluate(Identity(), data, gen.cfg, 0, CPU)["fid_domain_rec"]
    assert "the first 512" in r.provenance["sampler_detail"]


def test_an_exact_autoencoder_scores_the_reference_row_not_below_it(data):
    c = cfg(["fid_domain_rec"])
    rec = evaluate(Identity(), data, c, 0, CPU)["fid_domain_rec"].value
    row = GenerationEval(data, c, 0, CPU).reference_result(generation_metric("fid_domain_rec")).value
    assert rec == pytest.approx(row, rel=1e-9, abs=1e-9)
    assert row > 0  # held-out images against a disjoint reference set: a real floor, not zero


def decoded_codes(model, data) -> torch.Tensor:
    seen = []
    decode = model.decode
    model.decode = lambda z: seen.append(z.detach().clone()) or decode(z)
    try:
        draw(model.eval(), "gmm", 64, data, seed=0, gmm_components=2)
    finally:
        model.decode = decode
    return torch.cat(seen)


def test_gmm_draws_of_a_quantised_ae_lie_on_its_grid(data):
    torch.manual_seed(0)
    ae = build_model("ae-mlp", {"latent_bits": 2, "latent_dim": 8}, data.image_shape)
    fit_latent_sampler(ae, data)
    z = decoded_codes(ae, data)
    lo = ae._code_low  # the quantiser's range is [lo, 1], lo 0 after a ReLU code, else -1
    grid = lo + torch.arange(4) / 3 * (1 - lo)
    assert (z[..., None] - grid).abs().min(-1).values.max() < 1e-6


def test_gmm_draws_of_a_vq_vae_are_codebook_vectors(data):
    torch.manual_seed(0)
    vq = build_model("vq-vae", {"backbone": "mlp", "hidden": [32], "num_codes": 16}, data.image_shape)
    z = decoded_codes(vq, data).view(-1, vq.params.code_dim)  # every position's vector
    dist = (z[:, None] - vq.codebook).abs().amax(-1).min(1).values  # to the nearest codebook vector
    assert dist.max() == 0
