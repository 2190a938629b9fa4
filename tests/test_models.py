"""The contract every registered model honours (run over the whole registry), the shared
backbones, and the parameters that make variants."""

import io
import pickle

import pytest
import torch
from pydantic import ValidationError

from bench.models import MODELS, build_model
from bench.models.nets import Ghosh
from bench.train import STEP_KINDS

SHAPE = (1, 28, 28)


def train_steps(model, x, steps):
    step = STEP_KINDS[model.step_kind](model)
    losses = {}
    for s in range(steps):
        losses = step(model, x, s)
    return losses


TRAINED = [n for n in MODELS if MODELS.get(n).cls.step_kind != "none"]  # every model but the codecs


@pytest.fixture(params=TRAINED, ids=str)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, {}, SHAPE)


@pytest.mark.parametrize("name", list(MODELS))
def test_declares_family_and_step_kind(name):
    model = build_model(name, {}, SHAPE)
    assert model.family in ("ae", "vae", "gan", "codec")
    assert model.step_kind in STEP_KINDS
    assert (model.family == "codec") == (model.step_kind == "none")


@pytest.mark.parametrize("name", ["png", "jpeg", "webp"])
def test_codecs_train_nothing_and_reconstruct_8_bit_images(name):
    codec = build_model(name, {}, SHAPE)
    assert list(codec.parameters()) == [] and not codec.can_sample and codec.reconstructs
    x = torch.randint(0, 256, (3, *SHAPE)).float() / 255
    rec = codec.reconstruct(x)
    assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
    assert torch.equal((rec * 255).round(), rec * 255) or name != "png"  # 8-bit levels
    if name == "png":
        assert torch.equal(rec, x)


def test_one_step_changes_the_weights(model):
    x = torch.rand(8, *SHAPE)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    losses = train_steps(model, x, getattr(model, "n_critic", 1))  # GANs: up to the first generator step
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    for part in ("encoder", "decoder", "generator", "discriminator", "codebook"):
        if hasattr(model, part):
            assert any(k == part or k.startswith(part + ".") for k in changed), f"{part} did not change"


def test_sample_encode_and_reconstruct_shapes_and_range(model):
    model.eval()
    with torch.no_grad():
        s = model.sample(5)
        assert s.shape == (5, *SHAPE) and s.min() >= 0 and s.max() <= 1
        if model.has_encoder:
            x = torch.rand(4, *SHAPE)
            z = model.encode(x)
            assert z.shape == (4, model.params.latent_dim)
            rec = model.reconstruct(x)
            assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
            assert model.latent_bits() > 0
        else:
            assert model.latent_bits() is None


def test_state_dict_round_trip_gives_identical_outputs(model):
    train_steps(model, torch.rand(8, *SHAPE), 1)  # moves batch-norm statistics and codebooks off their init
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    name = next(n for n, e in MODELS.items() if type(model) is e.cls and e.make_params({}) == model.params)
    torch.manual_seed(1)
    clone = build_model(name, {}, SHAPE).eval()
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        assert torch.equal(model.sample(3, g1), clone.sample(3, g2))
        if model.has_encoder:
            x = torch.rand(2, *SHAPE)
            assert torch.equal(model.encode(x), clone.encode(x))
            assert torch.equal(model.reconstruct(x), clone.reconstruct(x))


def test_a_whole_model_pickles_and_its_copy_trains_alike(model):
    """The standard library's pickle (what multiprocessing and ``torch.save(model)`` use) takes
    every model, its loss functions included."""
    copy = pickle.loads(pickle.dumps(model))
    x = torch.rand(8, *SHAPE)
    torch.manual_seed(2)
    expected = train_steps(model, x, 1)
    torch.manual_seed(2)
    got = train_steps(copy, x, 1)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_resolved_parameters_rebuild_the_model(name):
    """What a run records (the variant's parameters, resolved and dumped) builds the same model."""
    resolved = MODELS.get(name).make_params({}).model_dump(mode="json")
    torch.manual_seed(0)
    a = build_model(name, {}, SHAPE)
    torch.manual_seed(0)
    b = build_model(name, resolved, SHAPE)
    assert a.params == b.params
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_every_variant_is_registered_with_its_family():
    expected = {
        "ae": ["ae-mlp", "ae-conv", "dae", "rae", "sparse-ae"],
        "vae": ["vae-mlp", "vae-conv", "iwae", "wae-mmd", "vq-vae"],
        "gan": ["gan-mlp", "dcgan", "lsgan", "wgan-gp", "hinge-gan"],
    }
    for family, names in expected.items():
        for name in names:
            assert MODELS.get(name).family == family, name


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


def test_variants_are_parameters_not_classes():
    vae = build_model("vae-conv", {"beta": 4}, SHAPE)
    assert type(vae) is MODELS.get("vae-conv").cls and vae.params.beta == 4
    # the GAN variants share one class and one set of nets; only loss, penalty and optimiser differ
    gans = {n: build_model(n, {}, SHAPE) for n in ("dcgan", "lsgan", "hinge-gan")}
    assert len({type(g) for g in gans.values()}) == 1
    shapes = {n: [tuple(p.shape) for p in g.parameters()] for n, g in gans.items()}
    assert shapes["dcgan"] == shapes["lsgan"] == shapes["hinge-gan"]
    assert {n: g.params.loss for n, g in gans.items()} == {"dcgan": "ns", "lsgan": "ls", "hinge-gan": "hinge"}


def test_wgan_gp_follows_the_protocol():
    m = build_model("wgan-gp", {}, SHAPE)
    p = m.params
    assert (p.loss, p.penalty, p.gp_lambda, p.n_critic, p.d_batch_norm) == ("wgan", "gp", 10.0, 5, False)
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.discriminator.modules())
    assert any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.generator.modules())


def test_conv_variants_of_a_family_share_their_nets():
    """ae-conv, dae, rae and sparse-ae differ in the objective only: same parameter shapes."""
    shapes = {
        n: [tuple(p.shape) for p in build_model(n, {}, SHAPE).parameters()]
        for n in ("ae-conv", "dae", "rae", "sparse-ae", "wae-mmd")
    }
    assert len({tuple(s) for s in shapes.values()}) == 1


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("dae", {"corruption": "mask", "noise": 1.0}, "noise"),
        ("vq-vae", {"latent_dim": 10, "code_dim": 4}, "latent_dim"),
        ("ae-conv", {"hidden": [256]}, "hidden"),
        ("dcgan", {"d_hidden": [256]}, "d_hidden"),
        ("wgan-gp", {"d_batch_norm": True}, "d_batch_norm"),
        ("ae-conv", {"backbone": "resnet"}, "backbone"),
        ("ae-mlp", {"latent_bits": 0}, "latent_bits"),
        ("iwae", {"beta": 2}, "beta"),  # a VAE's beta is not an IWAE parameter
    ],
)
def test_bad_parameters_are_rejected(name, params, field):
    with pytest.raises(ValidationError) as e:
        MODELS.get(name).make_params(params)
    assert field in str(e.value)


def test_dragan_may_keep_batch_norm_in_d():
    m = build_model("dcgan", {"penalty": "dragan", "d_batch_norm": True}, SHAPE)
    losses = train_steps(m, torch.rand(8, *SHAPE), 1)
    assert torch.isfinite(losses["gp"])


# --------------------------------------------------------------------------- the Ghosh et al. backbone


def test_ghosh_nets_match_the_paper_and_keep_the_data_path_at_28x28():
    g = Ghosh()
    enc, dec = g.encoder(SHAPE, 16), g.decoder(SHAPE, 16)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (128, (4, 4), (2, 2)),
        (256, (4, 4), (2, 2)),
        (512, (4, 4), (2, 2)),
        (1024, (4, 4), (2, 2)),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules()) == 4
    enc_fc = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in enc_fc] == [
        (1024 * 2 * 2, 16)
    ]  # 32 -> 2 after 4 halvings
    dec_fc = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec_fc] == [(16, 8 * 8 * 1024)]
    deconvs = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in deconvs] == [
        (512, (4, 4), (2, 2)),
        (256, (4, 4), (2, 2)),
        (1, (4, 4), (1, 1)),
    ]
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        padded = enc[0](x)
        assert padded.shape == (2, 1, 32, 32)
        assert torch.equal(padded[..., 2:30, 2:30], x)
        border = padded.clone()
        border[..., 2:30, 2:30] = 0
        assert not border.any()  # zeros around
        out = dec(enc(x))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_ghosh_backbone_is_a_parameter_of_the_encoder_families():
    for name in ("rae", "vae-conv", "wae-mmd"):
        m = build_model(name, {"backbone": "ghosh", "latent_dim": 16}, (1, 16, 16))  # small images: fast
        assert any(isinstance(x, torch.nn.Conv2d) and x.out_channels == 1024 for x in m.encoder.modules())
        losses = train_steps(m, torch.rand(4, 1, 16, 16), 1)
        assert torch.isfinite(losses["loss"])
        with torch.no_grad():
            assert m.eval().reconstruct(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)


# --------------------------------------------------------------------------- quantised codes


def test_latent_bits_quantise_the_code_before_decoding():
    m = build_model("ae-conv", {"latent_bits": 2}, SHAPE).eval()
    x = torch.rand(6, *SHAPE)
    with torch.no_grad():
        z = m.encode(x)
        grid = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
        assert torch.allclose(z.unsqueeze(-1).sub(grid).abs().min(-1).values, torch.zeros_like(z), atol=1e-6)
        assert torch.equal(m.reconstruct(x), m.decode(z))
        unquantised = m.decode(torch.tanh(m.encoder(x)))
        assert not torch.allclose(unquantised, m.reconstruct(x))  # the quantiser is on the path
    assert m.latent_bits() == 64 * 2
    relu = build_model("ae-mlp", {"latent_bits": 1}, SHAPE).eval()
    with torch.no_grad():
        assert set(relu.encode(x).unique().tolist()) <= {0.0, 1.0}


def test_quantised_codes_still_train_through_the_straight_through_gradient():
    m = build_model("ae-mlp", {"latent_bits": 3}, SHAPE)
    before = [p.clone() for p in m.encoder.parameters()]
    train_steps(m, torch.rand(8, *SHAPE), 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.encoder.parameters()))


def test_rae_decays_only_the_decoder_weights():
    m = build_model("rae", {"decoder_weight_decay": 1e-3, "weight_decay": 0.0}, SHAPE)
    groups = m.optimizer_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())  # each parameter exactly once
    decayed = next(g for g in groups if g.get("weight_decay"))
    assert decayed["weight_decay"] == 1e-3
    dec_ids = {id(p) for p in m.decoder.parameters()}
    assert decayed["params"] and all(id(p) in dec_ids and p.dim() > 1 for p in decayed["params"])
