"""The paper-protocol options: each a parameter whose default keeps the earlier behaviour and the
earlier config hash."""

from pathlib import Path

import pytest
import torch
from conftest import hash_as_recorded_before, tiny_suite
from pydantic import ValidationError

from bench.data import load_dataset
from bench.metrics.samplers import GMMOptions, latent_gmm
from bench.models import build_model
from bench.suite import SuiteError, expand, load_suite


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=1024, test_size=512)


def test_new_options_at_their_defaults_keep_the_config_hash(write_suite):
    models = [{"name": "ae-conv"}, {"name": "lsgan"}, {"name": "dcgan", "init": "pytorch"}]
    specs = expand(load_suite(write_suite(tiny_suite(models=models))))
    for spec in specs:
        assert {"init", "ls_on"} <= set(spec.params) or "prior_mean" in spec.params  # recorded as params
        assert spec.config_hash == hash_as_recorded_before(spec)
    changed = [
        {"name": "ae-conv", "prior_mean": "zero"},
        {"name": "lsgan", "ls_on": "sigmoid"},
        {"name": "dcgan", "init": "compare_gan"},
    ]
    other = expand(load_suite(write_suite(tiny_suite(models=changed))))
    assert all(a.config_hash != b.config_hash for a, b in zip(specs, other))
    dirichlet = expand(load_suite(write_suite(tiny_suite(models=models, eval={"gmm_kind": "dirichlet"}))))
    assert dirichlet[0].config_hash != specs[0].config_hash


def test_lsgan_on_sigmoid_outputs_matches_its_formula():
    model = build_model("lsgan", {"ls_on": "sigmoid"}, (1, 28, 28))
    r, f = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.0, 1.5])
    sr, sf = 1 / (1 + torch.exp(-r)), 1 / (1 + torch.exp(-f))
    d_want = 0.5 * (((sr - 1) ** 2).mean() + (sf**2).mean())
    g_want = 0.5 * ((sf - 1) ** 2).mean()
    torch.testing.assert_close(model._d_loss(r, f), d_want)
    torch.testing.assert_close(model._g_loss(f), g_want)
    logits = build_model("lsgan", {}, (1, 28, 28))  # Mao et al.'s form on the raw outputs
    torch.testing.assert_close(logits._d_loss(r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean())
    with pytest.raises(ValidationError, match="ls_on applies to loss 'ls'"):
        build_model("dcgan", {"ls_on": "sigmoid"}, (1, 28, 28))


def test_compare_gan_init_batch_norm_and_leaky_generator():
    torch.manual_seed(0)
    params = {"init": "compare_gan", "bn_momentum": 0.001, "bn_eps": 1e-3, "g_activation": "lrelu"}
    gan = build_model("dcgan", params, (1, 28, 28))
    convs = [m for m in gan.discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in gan.modules() if isinstance(m, torch.nn.Linear)]
    for c in convs:
        assert c.weight.abs().max() <= 0.04 + 1e-7  # truncated at 2 std
        assert 0.014 < c.weight.std() < 0.02  # a normal truncated at 2 std has std 0.88 * 0.02
    big = max(linears, key=lambda m: m.weight.numel())
    assert abs(big.weight.std().item() - 0.02) < 0.001 and big.weight.abs().max() > 0.06  # not truncated
    assert all(m.bias is None or not m.bias.any() for m in linears + convs)
    bns = [m for m in gan.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 5 and all(b.momentum == 0.001 and b.eps == 1e-3 for b in bns)
    acts = [m for m in gan.generator.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    assert len(acts) == 3 and all(isinstance(a, torch.nn.LeakyReLU) and a.negative_slope == 0.2 for a in acts)
    plain = build_model("dcgan", {}, (1, 28, 28))
    assert all(
        isinstance(a, torch.nn.ReLU) for a in plain.generator.modules() if isinstance(a, torch.nn.ReLU)
    )
    assert {m.momentum for m in plain.modules() if isinstance(m, torch.nn.BatchNorm1d)} == {0.1}
    with pytest.raises(ValidationError, match="options of the infogan backbone"):
        build_model("gan-mlp", {"init": "compare_gan"}, (1, 28, 28))


def test_zero_mean_gaussian_sampler_keeps_the_codes_covariance():
    codes = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 5
    fitted = build_model("ae-mlp", {"latent_dim": 3}, (1, 28, 28))
    zero = build_model("ae-mlp", {"latent_dim": 3, "prior_mean": "zero"}, (1, 28, 28))
    fitted.fit_latent_prior(codes)
    zero.fit_latent_prior(codes)
    torch.testing.assert_close(fitted.prior_mean.double(), codes.mean(0), rtol=0, atol=1e-6)
    assert not zero.prior_mean.any()
    torch.testing.assert_close(zero.prior_chol, fitted.prior_chol)


def test_dirichlet_gmm_and_max_iter_are_fitting_options(data):
    class Clusters(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            c = (x.flatten(1).argmax(1) % 3).float()
            return torch.stack([c * 10, -c * 10], 1) + 0.01 * x.flatten(1)[:, :2]

    enc = Clusters()
    em = latent_gmm(enc, data, components=6, seed=0)
    bayes = latent_gmm(enc, data, 6, 0, options=GMMOptions("dirichlet", 0.1, 100))
    short = latent_gmm(enc, data, 6, 0, options=GMMOptions("em", 0.1, 1))
    # a small Dirichlet-process concentration empties the components the 3 clusters do not need
    assert (bayes.weights < 0.01).sum() >= 3 and (em.weights < 0.01).sum() == 0
    assert short.n_iter == 1 and not short.converged
    assert "Dirichlet-process weight prior (0.1)" in GMMOptions("dirichlet").describe(10)


def test_a_reference_block_is_no_parameter_and_needs_its_metric(write_suite):
    pub = {"psnr": {"value": 20.0, "pm": 1.5, "source": "a paper, Table 1"}}
    plain = expand(load_suite(write_suite(tiny_suite())))[0]
    with_ref = expand(load_suite(write_suite(tiny_suite(models=[{"name": "ae-mlp", "reference": pub}]))))[0]
    assert "reference" not in with_ref.params and with_ref.config_hash == plain.config_hash
    assert with_ref.suite.models[0].reference["psnr"].band == (18.5, 21.5)
    bad = {"fid_domain": {"value": 1.0, "source": "x"}, "psnr": {"value": 1.0, "pm": -1, "source": "y"}}
    path = write_suite(tiny_suite(models=[{"name": "ae-mlp", "reference": bad}]))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert "models.0.reference.psnr.pm: Input should be greater than or equal to 0" in str(e.value)
    path = write_suite(
        tiny_suite(models=[{"name": "ae-mlp", "reference": {"fid_domain": bad["fid_domain"]}}])
    )
    with pytest.raises(
        SuiteError, match="models.0.reference.fid_domain: 'fid_domain' is not among eval.metrics"
    ):
        load_suite(path)


PAPER_SUITES = sorted(Path(__file__).resolve().parents[1].glob("suites/paper-*.yaml"))


def test_the_paper_suites_parse_and_list_the_papers_fids(capsys):
    from bench.cli import main

    assert len(PAPER_SUITES) >= 3
    assert main(["validate", *map(str, PAPER_SUITES)]) == 0
    out = capsys.readouterr().out
    for path in PAPER_SUITES:
        suite = load_suite(path)
        e = suite.eval
        assert f"{path}: ok" in out
        assert e.n_samples == e.n_real == 10000 and e.reference_split == "test"
        if suite.name.startswith("paper-lucic"):
            assert e.metrics == ["fid"]
            assert {m.params.get("ls_on") for m in suite.models if m.name == "lsgan"} == {"sigmoid"}
        else:
            assert e.metrics[:3] == ["fid_rec", "fid", "fid_gmm"] and e.gmm_kind == "dirichlet"
        fids = [m for m in e.metrics if m.startswith("fid")]
        for m in suite.models:  # every model carries the paper's value of every FID it reports
            assert m.reference and set(m.reference) == set(fids), m.display
            assert all(pv.source for pv in m.reference.values())
    assert "  metrics: fid (generation: 10000 samples vs the first 10000 test images)" in out
    assert "  metrics: fid_rec, fid, fid_gmm, recon_mse (generation" in out
