"""The contract every registered model honours (run over the whole registry)."""

import io

import pytest
import torch

from bench.models import MODELS, build_model
from bench.train import STEP_KINDS

SHAPE = (1, 28, 28)


@pytest.fixture(params=list(MODELS), ids=str)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, {}, SHAPE)


def test_declares_family_and_step_kind(model):
    assert model.family in ("ae", "vae", "gan")
    assert model.step_kind in STEP_KINDS


def test_one_step_changes_the_weights(model):
    x = torch.rand(16, *SHAPE)
    step = STEP_KINDS[model.step_kind](model)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for s in range(getattr(model, "n_critic", 1)):  # GANs: up to the first generator step
        losses = step(model, x, s)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    for part in ("encoder", "decoder", "generator", "discriminator"):
        if hasattr(model, part):
            assert any(k.startswith(part + ".") for k in changed), f"{part} did not change"


def test_sample_and_reconstruct_shapes_and_range(model):
    model.eval()
    with torch.no_grad():
        s = model.sample(5)
        assert s.shape == (5, *SHAPE) and s.min() >= 0 and s.max() <= 1
        if model.has_encoder:
            x = torch.rand(4, *SHAPE)
            z = model.encode(x)
            assert z.shape[0] == 4 and z.dim() == 2
            assert model.reconstruct(x).shape == x.shape
            assert model.latent_bits() > 0
        else:
            assert model.latent_bits() is None


def test_state_dict_round_trip_gives_identical_outputs(model):
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    name = next(
        n for n, e in MODELS.items() if isinstance(model, e.cls) and e.make_params({}) == model.params
    )
    torch.manual_seed(1)
    clone = build_model(name, {}, SHAPE).eval()
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        assert torch.equal(model.sample(3, g1), clone.sample(3, g2))
        if model.has_encoder:
            x = torch.rand(2, *SHAPE)
            assert torch.equal(model.reconstruct(x), clone.reconstruct(x))


def test_source_designs_have_the_documented_widths():
    ae = build_model("ae-mlp", {}, SHAPE)
    linears = [m for m in ae.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 128),
        (128, 64),
        (64, 128),
        (128, 784),
    ]
    gan = build_model("gan-mlp", {}, SHAPE)
    g = [(m.in_features, m.out_features) for m in gan.generator.modules() if isinstance(m, torch.nn.Linear)]
    d = [
        (m.in_features, m.out_features) for m in gan.discriminator.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert g == [(100, 400), (400, 800), (800, 784)] and d == [(784, 500), (500, 250), (250, 1)]


def test_vae_beta_is_a_parameter_not_a_class():
    vae = build_model("vae-conv", {"beta": 4}, SHAPE)
    assert type(vae) is MODELS.get("vae-conv").cls and vae.params.beta == 4
