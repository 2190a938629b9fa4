"""Faults inside a run are states, not crashes: a diverged or crashing run ends FAILED with its
reason, the suite goes on, the report lists it, `bench run` exits 1, and a rerun retries it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.models import MODELS


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def child_runs(store: str, suite: str = "tiny") -> dict[str, list]:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(suite)
    out: dict[str, list] = {}
    for r in client.search_runs(
        [exp.experiment_id], "tags.`bench.kind` = 'run'", order_by=["start_time ASC"]
    ):
        out.setdefault(r.info.run_name, []).append(r)
    return out


def test_divergence_fails_the_run_and_the_suite_goes_on(tmp_path, write_suite, store, monkeypatch, capsys):
    vae = MODELS.get("vae-mlp").cls
    original = vae.loss

    def nan_loss(self, x):
        out = original(self, x)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(vae, "loss", nan_loss)
    path = write_suite(tiny_suite())  # ae-mlp, vae-mlp, gan-mlp
    args = ["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "run vae-mlp/seed0 FAILED: non-finite loss" in err
    runs = child_runs(store)
    assert [r.info.status for r in runs["ae-mlp/seed0"]] == ["FINISHED"]
    assert [r.info.status for r in runs["gan-mlp/seed0"]] == ["FINISHED"]  # trained after the failure
    (failed,) = runs["vae-mlp/seed0"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"].startswith("non-finite loss")
    assert "recon_mse" not in failed.data.metrics  # a failure is a state, never a number
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Runs and metrics that did not finish" in md
    assert "| tiny | vae-mlp | 0 | FAILED | non-finite loss" in md
    table = pd.read_csv(tmp_path / "rep" / "results.csv").set_index("label")
    assert table.loc["vae-mlp", "failed"] == 1 and table.loc["vae-mlp", "seeds"] == 0
    client = MlflowClient(store)
    (suite_run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'suite'"
    )
    assert suite_run.info.status == "FAILED" and suite_run.data.tags["bench.failed"] == "1"

    # the cause fixed, the same command retrains the failed run only
    monkeypatch.setattr(vae, "loss", original)
    assert main(args) == 0
    runs = child_runs(store)
    assert [r.info.status for r in runs["vae-mlp/seed0"]] == ["FAILED", "FINISHED"]
    assert len(runs["ae-mlp/seed0"]) == 1 and len(runs["gan-mlp/seed0"]) == 1
    table = pd.read_csv(tmp_path / "rep" / "results.csv").set_index("label")
    assert table.loc["vae-mlp", "failed"] == 0 and table.loc["vae-mlp", "seeds"] == 1


def test_an_error_inside_a_run_fails_that_run_only(tmp_path, write_suite, store, monkeypatch, capsys):
    gan = MODELS.get("gan-mlp").cls

    def broken(self, x, z):
        raise RuntimeError("discriminator exploded")

    monkeypatch.setattr(gan, "d_loss", broken)
    path = write_suite(
        tiny_suite(models=[{"name": "gan-mlp"}, {"name": "ae-mlp"}], eval={"metrics": ["psnr"]})
    )
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 1
    assert "run gan-mlp/seed0 FAILED: RuntimeError: discriminator exploded" in capsys.readouterr().err
    runs = child_runs(store)
    (g,) = runs["gan-mlp/seed0"]
    assert g.info.status == "FAILED"
    assert g.data.tags["failure_reason"] == "RuntimeError: discriminator exploded"
    client = MlflowClient(store)
    tb = client.download_artifacts(g.info.run_id, "traceback.txt", str(tmp_path))
    assert "discriminator exploded" in open(tb).read()
    assert [r.info.status for r in runs["ae-mlp/seed0"]] == ["FINISHED"]


# --------------------------------------------------------------------------- bench eval and sample


def test_bench_eval_of_a_suite_computes_for_each_run_the_suite_metrics_of_its_family(
    tmp_path, write_suite, store, capsys
):
    """`bench eval SUITE` without --metrics: a GAN of a suite that asks for psnr gets the metrics
    that apply to it (none here), not a refusal of the whole request."""
    models = [{"name": "ae-mlp"}, {"name": "gan-mlp"}]
    path = write_suite(tiny_suite(models=models, eval={"metrics": ["psnr"]}))
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    assert main(["eval", "tiny", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "gan-mlp/seed0" in out and "(no metric applies)" in out
    runs = child_runs(store)
    (ae,) = runs["ae-mlp/seed0"]
    assert "bench eval" in ae.data.tags["provenance.psnr"]
    assert [r.info.status for rs in runs.values() for r in rs] == ["FINISHED", "FINISHED"]


def test_a_sample_stopped_while_writing_leaves_the_previous_file(tmp_path, write_suite, store, monkeypatch):
    from PIL import Image

    path = write_suite(tiny_suite(models=[{"name": "vae-mlp"}], eval={"metrics": ["psnr"]}))
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 0
    (run,) = child_runs(store)["vae-mlp/seed0"]
    out = tmp_path / "s.png"
    assert main(["sample", run.info.run_id, "-n", "4", "-o", str(out), "--tracking-uri", store]) == 0
    before = out.read_bytes()
    Image.open(out).verify()
    save = Image.Image.save

    def stopped(self, fp, *args, **kwargs):  # the process stopped halfway through the file
        save(self, fp, *args, **kwargs)
        if hasattr(fp, "truncate"):
            fp.truncate(20)
        else:
            Path(fp).write_bytes(Path(fp).read_bytes()[:20])
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        main(["sample", run.info.run_id, "-n", "9", "-o", str(out), "--tracking-uri", store])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.glob(".s.png*")] == []
