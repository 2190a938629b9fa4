"""The one likelihood estimator (nll_bpd, nll_nats): normalised discrete likelihoods, values by
hand, the same value for the same weights whatever the model's objective, k against 2k on a
trained model, and a best mark per likelihood family in reports."""

import math

import pandas as pd
import pytest
import torch
from scipy.stats import norm

from bench.config import BudgetConfig, EvalConfig
from bench.data import load_dataset
from bench.metrics import METRICS, evaluate
from bench.metrics.likelihood import GAUSSIAN_VAR, log_likelihood
from bench.models import build_model
from bench.report.summary import summarise
from bench.train import Trainer

SMALL = {"backbone": "mlp", "hidden": [32]}


def run(model, data, metrics, **cfg):
    return evaluate(model.eval(), data, EvalConfig(metrics=metrics, **cfg), 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", train_size=64, test_size=40)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("levels", [256, 2])
@pytest.mark.parametrize("mean", [0.0, 1e-9, 0.03, 0.3, 0.5, 0.5 + 1e-7, 0.77, 0.999, 1.0])
def test_each_decoder_is_a_distribution_over_the_pixel_levels(kind, levels, mean):
    x = (torch.arange(levels, dtype=torch.float64) / (levels - 1)).view(levels, 1, 1, 1)
    p = log_likelihood(kind, torch.full((levels, 1, 1, 1), mean), x, levels).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert (p > 0).all()


def test_gaussian_bins_by_hand():
    mean = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64).view(1, 1, 1, 3)
    x = torch.tensor([0.0, 100 / 255, 1.0], dtype=torch.float64).view(1, 1, 1, 3)
    sd, h = math.sqrt(GAUSSIAN_VAR), 0.5 / 255
    by_hand = (
        math.log(norm.cdf((h - 0.2) / sd))  # the first bin is open below
        + math.log(norm.cdf((100 / 255 + h - 0.6) / sd) - norm.cdf((100 / 255 - h - 0.6) / sd))
        + math.log(norm.sf((1 - h - 0.9) / sd))  # the last one above
    )
    assert log_likelihood("gaussian", mean, x, 256).item() == pytest.approx(by_hand, rel=1e-10)


def test_continuous_bernoulli_bin_by_numerical_integration():
    lam, lo, hi = 0.8, 99.5 / 255, 100.5 / 255
    t = math.log(lam / (1 - lam))
    xs = torch.linspace(lo, hi, 10001, dtype=torch.float64)
    density = t / math.expm1(t) * torch.exp(t * xs)  # the continuous Bernoulli on [0, 1]
    mass = torch.trapezoid(density, xs).item()
    one = {"dtype": torch.float64}
    x = torch.tensor([[[[100 / 255]]]], **one)
    got = log_likelihood("bernoulli", torch.tensor([[[[lam]]]], **one), x, 256)
    assert got.item() == pytest.approx(math.log(mass), rel=1e-8)


def _plain_masses(kind: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The 256-level bin masses written out as formulas, one tensor op at a time: the reference
    for the estimator's in-place arithmetic."""
    out, x = out.double(), x.double()
    h = 0.5 / 255
    if kind == "gaussian":
        sd = math.sqrt(GAUSSIAN_VAR)
        a = torch.where(x <= 0, -math.inf, (x - h - out) / sd)
        b = torch.where(x >= 1, math.inf, (x + h - out) / sd)
        a, b = torch.where(a > 0, -b, a), torch.where(a > 0, -a, b)
        log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
        return log_b + torch.log1p(-torch.exp(log_a - log_b))
    lo, hi = (x - h).clamp(0, 1), (x + h).clamp(0, 1)
    lam = out.clamp(1e-6, 1 - 1e-6)
    t = torch.log(lam) - torch.log1p(-lam)
    start = torch.where(t < 0, 1 - hi, lo)
    t = t.abs().clamp_min(1e-12)

    def log_expm1(y: torch.Tensor) -> torch.Tensor:
        return y + torch.log(-torch.expm1(-y))

    return t * start + log_expm1(t * (hi - lo)) - log_expm1(t)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_the_draws_of_each_image_score_as_the_formula_with_the_image_broadcast(kind):
    g = torch.Generator().manual_seed(0)
    k, b = 5, 7
    x = torch.randint(0, 256, (b, 1, 6, 6), generator=g).double() / 255
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])  # both outer bins
    out = torch.rand(k, b, 1, 6, 6, generator=g)  # float32, as a decoder gives it
    out[0, 0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5, 1e-9])  # saturated and symmetric parameters
    got = log_likelihood(kind, out, x, 256)
    assert got.shape == (k, b)
    want = _plain_masses(kind, out, x.expand(k, -1, -1, -1, -1)).flatten(2).sum(-1)
    assert torch.allclose(got, want, rtol=1e-13, atol=0)
    for j in range(k):  # the same as each draw scored on its own against its images
        assert torch.equal(got[j], log_likelihood(kind, out[j], x, 256))


def test_the_likelihood_metrics_apply_to_models_with_a_likelihood_only(synthetic):
    metrics = ["recon_mse", "nll_bpd", "nll_nats"]
    got = {
        name: set(run(build_model(name, params, synthetic.image_shape), synthetic, metrics))
        for name, params in [
            ("vae-mlp", {}),
            ("iwae", SMALL),
            ("vq-vae", SMALL),
            ("wae-mmd", SMALL),
            ("ae-mlp", {}),
            ("gan-mlp", {}),
        ]
    }
    assert got["vae-mlp"] == got["iwae"] == got["vq-vae"] == set(metrics)
    assert got["wae-mmd"] == got["ae-mlp"] == {"recon_mse"}
    assert got["gan-mlp"] == set()
    assert not METRICS.get("nll_bpd").applies_to("vae", frozenset())


def test_vq_vae_by_hand(synthetic):
    torch.manual_seed(0)
    m = build_model("vq-vae", {**SMALL, "num_codes": 16}, synthetic.image_shape).eval()
    x = synthetic.test_x.double() / 255
    with torch.no_grad():
        mu = m.reconstruct(x.float()).double().numpy()
    sd, h, xs = math.sqrt(GAUSSIAN_VAR), 0.5 / 255, x.numpy()
    upper = norm.cdf((xs + h - mu) / sd)
    lower = norm.cdf((xs - h - mu) / sd)
    upper[xs >= 1], lower[xs <= 0] = 1.0, 0.0
    log_px = torch.from_numpy(upper - lower).log().flatten(1).sum(1)
    nats = (-log_px + 16 * math.log(16)).mean().item()  # a point posterior and a uniform prior over 16^16
    res = run(m, synthetic, ["nll_nats", "nll_bpd"], nll_k=8)
    assert res["nll_nats"].value == pytest.approx(nats, rel=1e-9)
    assert res["nll_bpd"].value == pytest.approx(res["nll_nats"].value / (784 * math.log(2)), rel=1e-12)
    assert res["nll_bpd"].provenance["likelihood"] == "gaussian"
    assert res["nll_bpd"].provenance["units"] == "bits per dimension"


def test_the_same_weights_score_the_same_whatever_the_objective(synthetic):
    """vae-mlp, a beta-VAE and an IWAE (its own k 50) on one set of weights: one estimator, one value."""
    torch.manual_seed(0)
    vae = build_model("vae-mlp", {}, synthetic.image_shape)
    beta = build_model("vae-mlp", {"beta": 4}, synthetic.image_shape)
    iwae = build_model("iwae", {"backbone": "mlp", "hidden": [128], "k": 50}, synthetic.image_shape)
    beta.load_state_dict(vae.state_dict())
    iwae.load_state_dict(vae.state_dict())
    values = [run(m, synthetic, ["nll_bpd"], nll_k=4)["nll_bpd"] for m in (vae, beta, iwae)]
    assert values[0].value == values[1].value == values[2].value
    assert values[2].provenance["k"] == 4


@pytest.fixture(scope="module")
def trained_vae():
    data = load_dataset("fashion-mnist", train_size=6400, test_size=500)
    torch.manual_seed(0)
    model = build_model("vae-mlp", {}, data.image_shape)
    Trainer(model, data, BudgetConfig(steps=300, batch_size=64), 0).run()
    return model, data


def test_the_default_k_is_within_half_a_percent_of_twice_as_many(trained_vae):
    model, data = trained_vae
    k = EvalConfig().nll_k

    def nll(k):
        return run(model, data, ["nll_bpd"], nll_k=k)["nll_bpd"].value

    one, default, double = nll(1), nll(k), nll(2 * k)
    assert double <= default <= one  # more samples, a tighter bound
    assert (default - double) / double < 0.005


def test_each_likelihood_family_has_its_own_best():
    rows = []
    for label, model, lik, value in [
        ("vae-a", "vae-mlp", "bernoulli", 7.0),
        ("vae-b", "vae-mlp", "bernoulli", 7.2),
        ("vq", "vq-vae", "gaussian", 7.9),
        ("vq-b", "vq-vae", "gaussian", 8.1),
    ]:
        for seed in (0, 1):
            rows.append(
                {
                    "suite": "s", "label": label, "model": model, "family": "vae",
                    "capabilities": frozenset({"likelihood"}), "likelihood": lik, "seed": seed,
                    "status": "FINISHED", "failure_reason": "", "run_id": f"{label}{seed}",
                    "start_time": 0, "nll_bpd": value + 0.01 * seed,
                }
            )
    long = summarise(pd.DataFrame(rows)).long.set_index("label")
    assert long.loc["vae-a", "best"] and long.loc["vq", "best"]
    assert not long.loc["vae-b", "best"] and not long.loc["vq-b", "best"]


def test_the_estimate_does_not_depend_on_the_batch_size(synthetic):
    torch.manual_seed(0)
    vae = build_model("vae-mlp", {}, synthetic.image_shape)
    values = [run(vae, synthetic, ["nll_bpd"], nll_k=40, batch_size=bs)["nll_bpd"].value for bs in (7, 500)]
    assert values[0] == values[1]
