"""End to end: the real CLI on a tiny synthetic suite with a real sqlite MLflow store."""

import subprocess
import sys

import pandas as pd
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main


def test_run_then_report(tmp_path, write_suite, store, capsys):
    path = write_suite(
        tiny_suite(
            seeds=[0, 1], eval={"every": 3, "metrics": ["recon_mse", "psnr", "ssim", "compression_ratio"]}
        )
    )
    rc = main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "r1")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| ae-mlp (baseline) | ae | 2 |" in printed and "bench ui --tracking-uri" in printed

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")
    assert len(runs) == 6
    by_name = {r.info.run_name: r for r in runs}
    ae = by_name["ae-mlp/seed1"]
    assert ae.data.tags["family"] == "ae" and ae.data.params["params.latent_dim"] == "64"
    assert ae.data.metrics["budget_steps"] == 6 and ae.data.metrics["budget_images"] == 6 * 32
    assert "provenance.recon_mse" in ae.data.tags
    history = client.get_metric_history(ae.info.run_id, "recon_mse")
    assert [m.step for m in history] == [3, 6]  # eval.every and the end
    assert [m.step for m in client.get_metric_history(ae.info.run_id, "train/loss")] == [2, 4, 6]
    artifacts = {a.path for a in client.list_artifacts(ae.info.run_id)}
    assert {"config.json", "samples.png", "reconstructions.png", "model"} <= artifacts
    gan = by_name["gan-mlp/seed0"]
    assert "recon_mse" not in gan.data.metrics and "reconstructions.png" not in {
        a.path for a in client.list_artifacts(gan.info.run_id)
    }

    # the report is rebuilt from the store alone, by another process
    out = tmp_path / "r2"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", "tiny", "--tracking-uri", store, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "results.csv")
    assert list(table.label) == ["ae-mlp", "vae-mlp", "gan-mlp"]
    assert table.set_index("label").loc["ae-mlp", "recon_mse_mean"] > 0
    assert (table.seeds == 2).all()
    md = (out / "report.md").read_text()
    assert "| gan-mlp | gan | 2 | n/a |" in md


def test_misspelt_key_exits_2_and_writes_nothing(tmp_path, write_suite, store, capsys):
    path = write_suite(tiny_suite(budget={"stesp": 5, "batch_size": 8}))
    rc = main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{path}: budget.stesp: unknown key" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "rep").exists()
    assert main(["validate", str(path)]) == 2


def test_list_shows_every_family(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ae-mlp" in out and " gan " in out and " vae " in out and "recon_mse" in out
