"""Damaged artifacts of a stored run: `bench eval`, `bench sample` and `bench report` read what a run
logged back from the store; a damaged file there is bad input (exit 2, the file named, nothing
written), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One tiny `bench run` (a VAE, three seeds), shared: each test damages a file of its own run."""
    tmp = tmp_path_factory.mktemp("damaged")
    path = tmp / "suite.yaml"
    suite = tiny_suite(
        name="damaged",
        models=[{"name": "vae-mlp"}],
        seeds=[0, 1, 2],
        budget={"steps": 2, "batch_size": 32},
        eval={"metrics": ["recon_mse"], "batch_size": 64},
    )
    path.write_text(yaml.safe_dump(suite))
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp / "report")]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("damaged").experiment_id
    found = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    runs = {r.data.tags["seed"]: r.info.run_id for r in found}
    return tmp, store, client, exp, runs


def artifact(client: MlflowClient, run_id: str, name: str) -> Path:
    """Where the store keeps a run's artifact file (the sqlite store's mlartifacts/ folder)."""
    return Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path)) / name


def snapshot(client: MlflowClient, exp: str) -> dict:
    """Every run of the experiment (model, suite and reference runs) with its metrics, tags and status."""
    return {
        r.info.run_id: (r.data.metrics, r.data.tags, r.info.status) for r in client.search_runs([exp], "")
    }


def test_a_truncated_state_dict_is_exit_2_naming_it(stored, capsys):
    tmp, store, client, exp, runs = stored
    run_id = runs["0"]
    state = artifact(client, run_id, "model/state_dict.pt")
    state.write_bytes(state.read_bytes()[:100])
    before = snapshot(client, exp)
    sample = ["sample", run_id, "-n", "4", "-o", str(tmp / "s.png")]
    for args in (["eval", run_id], ["eval", "damaged"], sample):
        assert main([*args, "--tracking-uri", store]) == 2, args
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if args[1] == run_id:
            assert f"run {run_id} (vae-mlp/seed0): artifact model/state_dict.pt: cannot be read" in err, err
    assert snapshot(client, exp) == before  # nothing logged: no metric, no tag, no reference run
    assert not (tmp / "s.png").exists()


def test_a_config_without_its_fields_is_exit_2_naming_them(stored, capsys):
    tmp, store, client, exp, runs = stored
    run_id = runs["1"]
    artifact(client, run_id, "config.json").write_text(json.dumps({"suite": "rvgen"}))
    before = snapshot(client, exp)
    for args in (["eval", run_id], ["sample", run_id, "-n", "4", "-o", str(tmp / "s.png")]):
        assert main([*args, "--tracking-uri", store]) == 2, args
        err = capsys.readouterr().err
        assert f"run {run_id} (vae-mlp/seed1): artifact config.json: field 'dataset' is missing" in err, err
        assert "Traceback" not in err
    assert snapshot(client, exp) == before
    assert not (tmp / "s.png").exists()


def test_a_spec_naming_another_model_or_a_step_count_not_whole_is_exit_2(stored, capsys, monkeypatch):
    """model/spec.json must name the model config.json names, and config.json's params no model
    (a stored file chooses no other model, built-in or plugin), and the run's budget_steps must be
    a whole number."""
    tmp, store, client, exp, runs = stored
    run_id = runs["2"]
    config = artifact(client, run_id, "config.json")
    kept = config.read_text()
    monkeypatch.chdir(tmp)  # a module of that name where the suite's own folder would be searched
    (tmp / "evilmod.py").write_text(f"open({str(tmp / 'ran')!r}, 'w').close()\n")
    doc = json.loads(kept)
    config.write_text(json.dumps({**doc, "params": {**doc["params"], "name": "evilmod:X"}}))
    for args in (["eval", run_id], ["sample", run_id, "-n", "4", "-o", str(tmp / "s.png")]):
        assert main([*args, "--tracking-uri", store]) == 2, args
        err = capsys.readouterr().err
        assert "artifact config.json: field 'params' holds name, which are no model parameters" in err, err
    assert not (tmp / "ran").exists()
    config.write_text(kept)
    spec = artifact(client, run_id, "model/spec.json")
    text = spec.read_text()
    spec.write_text(json.dumps({**json.loads(text), "model": "os:system"}))
    before = snapshot(client, exp)
    for args in (["eval", run_id], ["sample", run_id, "-n", "4", "-o", str(tmp / "s.png")]):
        assert main([*args, "--tracking-uri", store]) == 2, args
        err = capsys.readouterr().err
        assert "field 'model' is 'os:system'; the run's config.json says 'vae-mlp'" in err, err
    spec.write_text(text)
    client.log_metric(run_id, "budget_steps", float("nan"), step=10**6)  # the latest value
    assert main(["eval", run_id, "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert f"run {run_id} (vae-mlp/seed2): metric budget_steps must be a whole number: nan" in err, err
    assert "Traceback" not in err
    after = snapshot(client, exp)
    assert after.keys() == before.keys()  # no reference run
    assert {k: v for k, v in after.items() if k != run_id} == {k: v for k, v in before.items() if k != run_id}
    assert after[run_id][0].keys() == before[run_id][0].keys()  # no metric logged
    assert not (tmp / "s.png").exists()


def test_a_report_goes_without_an_environment_that_is_not_an_object(stored, capsys):
    tmp, store, client, exp, _ = stored
    assert "Environment:" in (tmp / "report" / "report.md").read_text()  # as `bench run` wrote it
    (parent,) = client.search_runs([exp], "tags.`bench.kind` = 'suite'")
    artifact(client, parent.info.run_id, "environment.json").write_text(json.dumps(["torch", "2.5"]))
    out = tmp / "report2"
    assert main(["report", "damaged", "--tracking-uri", store, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| vae-mlp |" in md and "Environment:" not in md
