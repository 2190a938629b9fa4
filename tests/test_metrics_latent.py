"""Latent and application metrics against values computed by hand, their applicability (n/a,
never 0), and one end-to-end comparison table across the three families."""

import math

import pandas as pd
import pytest
import torch
from conftest import tiny_suite

from bench.cli import main
from bench.config import EvalConfig
from bench.data import ImageData, load_dataset
from bench.metrics import evaluate
from bench.models import build_model


def image_data(train_codes, train_y, test_codes, test_y) -> ImageData:
    """A dataset whose images *are* codes: (N, k) values in [0, 255] as (N, 1, 1, k) uint8 images."""

    def imgs(c):
        return torch.as_tensor(c, dtype=torch.float32).round().clamp(0, 255).to(torch.uint8)[:, None, None, :]

    return ImageData(
        "codes",
        imgs(train_codes),
        torch.as_tensor(train_y),
        imgs(test_codes),
        torch.as_tensor(test_y),
        num_classes=int(max(train_y)) + 1,
        checksum="test",
        source="test",
    )


class Flatten(torch.nn.Module):
    """A fake autoencoder whose code is the image itself (x in [0, 1], flattened)."""

    family = "ae"
    has_encoder = True

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x.flatten(1)

    def reconstruct(self, x):
        return x


def run(model, data, metrics, batch_size=500, n_test=None):
    cfg = EvalConfig(metrics=metrics, batch_size=batch_size, n_test=n_test)
    return evaluate(model, data, cfg, 0, torch.device("cpu"))


def separable(n, seed, shuffle_labels=False):
    """Ten classes in 12 dimensions: each class a cluster around its own corner, linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    centres = torch.zeros(10, 12)
    centres[torch.arange(10), torch.arange(10)] = 120.0
    codes = 60 + centres[y] + 12 * torch.randn(n, 12, generator=g)
    if shuffle_labels:
        y = y[torch.randperm(n, generator=g)]
    return codes, y


def test_linear_probe_separates_separable_latents_and_not_noise():
    tr, ytr = separable(600, 0)
    te, yte = separable(300, 1)
    res = run(Flatten(), image_data(tr, ytr, te, yte), ["probe_acc", "knn_acc"])
    assert res["probe_acc"].value > 0.9 and res["knn_acc"].value > 0.9
    assert res["probe_acc"].provenance["fit"] == {"split": "train", "n": 600}
    # the same codes with labels that mean nothing: about chance (1/10)
    tr, ytr = separable(600, 0, shuffle_labels=True)
    te, yte = separable(300, 1, shuffle_labels=True)
    res = run(Flatten(), image_data(tr, ytr, te, yte), ["probe_acc", "knn_acc"])
    assert res["probe_acc"].value < 0.3 and res["knn_acc"].value < 0.3


def test_knn_accuracy_by_hand():
    # train: ten codes of class 0 near 0, ten of class 1 near 200 (1-D codes)
    tr = torch.tensor([[float(i)] for i in range(10)] + [[200.0 + i] for i in range(10)])
    ytr = torch.tensor([0] * 10 + [1] * 10)
    # test: near 0 -> 0 (right), near 200 -> 1 (right), near 0 but labelled 1 (wrong): 2 of 3
    te, yte = torch.tensor([[3.0], [205.0], [6.0]]), torch.tensor([0, 1, 1])
    res = run(Flatten(), image_data(tr, ytr, te, yte), ["knn_acc"])
    assert res["knn_acc"].value == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", train_size=64, test_size=40)


def test_denoise_psnr_by_hand(synthetic):
    class Half(Flatten):
        def reconstruct(self, x):
            return torch.full_like(x, 0.5)

    # a model that outputs mid-grey whatever it is given: PSNR against the clean images only
    x = synthetic.test_x.double() / 255
    by_hand = (10 * torch.log10(1 / ((x - 0.5) ** 2).flatten(1).mean(1))).mean().item()
    assert run(Half(), synthetic, ["denoise_psnr"])["denoise_psnr"].value == pytest.approx(by_hand, rel=1e-4)
    # the identity gives back the noisy input: PSNR of noise of sigma 0.3, clipped to [0, 1]
    identity = run(Flatten(), synthetic, ["denoise_psnr"])["denoise_psnr"]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()
    noisy = (x + 0.3 * noise).clamp(0, 1)
    by_hand = (10 * torch.log10(1 / ((noisy - x) ** 2).flatten(1).mean(1))).mean().item()
    assert identity.value == pytest.approx(by_hand, rel=1e-4)
    assert 10 < identity.value < -10 * math.log10(0.3**2) + 3  # clipping removes some of the noise
    assert "sigma 0.3" in identity.provenance["noise"]


def test_denoise_psnr_does_not_depend_on_batch_size(synthetic):
    m = build_model("dae", {"backbone": "mlp", "hidden": [32]}, synthetic.image_shape)
    a = run(m, synthetic, ["denoise_psnr"], batch_size=7)["denoise_psnr"].value
    b = run(m, synthetic, ["denoise_psnr"], batch_size=500)["denoise_psnr"].value
    assert a == pytest.approx(b, rel=1e-5)


def test_one_table_compares_the_families_with_n_a_where_a_metric_does_not_apply(tmp_path, write_suite, store):
    small = {"backbone": "mlp", "hidden": [32]}
    metrics = ["recon_mse", "compression_ratio", "probe_acc", "knn_acc", "denoise_psnr", "nll_bpd"]
    suite = tiny_suite(
        budget={"steps": 4, "batch_size": 32},
        eval={"metrics": metrics, "batch_size": 64},
        models=[
            {"name": "ae-mlp"},
            {"name": "vq-vae", **small},
            {"name": "wae-mmd", **small},
            {"name": "gan-mlp"},
        ],
    )
    assert main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 0
    table = pd.read_csv(tmp_path / "r" / "results.csv").set_index("label")
    # measured bitstreams: a VQ-VAE's 16 indices cost at most about 16 x 8 bits, float codes without
    # eval.code_step have no rate at all
    assert 784 * 8 / (16 * 8 + 32) <= table.loc["vq-vae", "compression_ratio_mean"] < 784 * 8 / 32
    assert math.isnan(table.loc["ae-mlp", "compression_ratio_mean"])
    assert 0 <= table.loc["ae-mlp", "probe_acc_mean"] <= 1
    md = (tmp_path / "r" / "report.md").read_text().split("### Evaluation time")[0]  # the metrics' tables
    cells: dict[tuple[str, str], str] = {}  # (label, metric) -> cell, over the report's per-use tables
    cols: list[str] = []
    for line in md.splitlines():
        if line.startswith("| model"):
            cols = [c.strip().split(" ")[0] for c in line.strip("|").split("|")]
        elif line.startswith("| ") and cols:
            row = [c.strip() for c in line.strip().strip("|").split("|")]
            cells |= {(row[0].removesuffix(" (baseline)"), c): v for c, v in zip(cols, row)}
        elif not line.strip():
            cols = []

    def cell(label, metric):
        return cells[label, metric]

    assert all(cell("gan-mlp", m) == "n/a" for m in metrics)
    assert cell("wae-mmd", "nll_bpd") == "n/a" and cell("ae-mlp", "nll_bpd") == "n/a"
    assert cell("vq-vae", "nll_bpd") not in ("n/a", "—", "0")
    assert cell("wae-mmd", "probe_acc") not in ("n/a", "—")
    # the decoder distribution is recorded with the run: the report ranks likelihoods within it
    from mlflow import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.label = 'vq-vae'")
    assert [r.data.tags.get("bench.likelihood") for r in runs] == ["gaussian"]


def test_list_shows_every_variant_with_its_family(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    families = {
        line.split()[0]: line.split()[1] for line in lines if line.startswith("  ") and len(line.split()) > 1
    }
    for name in ("ae-mlp", "ae-conv", "dae", "rae", "sparse-ae"):
        assert families[name] == "ae"
    for name in ("vae-mlp", "vae-conv", "iwae", "wae-mmd", "vq-vae"):
        assert families[name] == "vae"
    for name in ("gan-mlp", "dcgan", "lsgan", "wgan-gp", "hinge-gan"):
        assert families[name] == "gan"
