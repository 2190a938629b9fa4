"""What an MLflow user expects of a bench store: the experiment opens on its training runs, each
run names its dataset and its model loads with ``mlflow.pytorch.load_model``."""

from __future__ import annotations

import json

import mlflow.pytorch
import torch
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.store.tracking import EXPERIMENT_TAGS, _Env


def test_experiment_kind_dataset_names_and_loadable_model(tmp_path, write_suite, store):
    suite = tiny_suite(name="uisuite", seeds=[0, 1], models=[{"name": "ae-mlp"}, {"name": "gan-mlp"}])
    assert main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(tmp_path / "o")]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("uisuite")
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_TAGS["mlflow.experimentKind"]
    runs = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")
    assert sorted(r.info.run_name for r in runs) == [
        "ae-mlp/seed0",
        "ae-mlp/seed1",
        "gan-mlp/seed0",
        "gan-mlp/seed1",
    ]

    parent = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'suite'")[0]
    for r in runs:
        (inp,) = r.inputs.dataset_inputs
        assert inp.dataset.name == "synthetic"
        assert inp.dataset.digest == parent.data.params["dataset.checksum"]
        assert json.loads(inp.dataset.profile)["train"] == 256
        assert json.loads(inp.dataset.profile)["test"] == 64
        # the artifacts `bench eval` and `bench sample` read are still there
        with _Env({"MLFLOW_TRACKING_URI": store}):
            names = {a.path for a in client.list_artifacts(r.info.run_id, "model")}
        assert {"model/state_dict.pt", "model/spec.json", "model/MLmodel"} <= names

    gan = next(r for r in runs if r.info.run_name == "gan-mlp/seed0")
    with _Env({"MLFLOW_TRACKING_URI": store}):
        model = mlflow.pytorch.load_model(f"runs:/{gan.info.run_id}/model")
        local = client.download_artifacts(gan.info.run_id, "model/state_dict.pt", str(tmp_path))
    # the loaded model is the trained one: same weights as its state_dict, and it samples images
    state = torch.load(local, weights_only=True)
    assert all(torch.equal(v.cpu(), state[k].cpu()) for k, v in model.state_dict().items())
    x = model.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()
    # runs stay FINISHED: logging the model does not end or reopen them
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_existing_experiment_gets_the_kind_tag(store):
    from bench.store.tracking import Tracker

    client = MlflowClient(store)
    exp_id = client.create_experiment("old")
    Tracker(store).experiment_id("old")
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_suite_run_and_experiment_describe_the_answers_and_a_persons_note_is_kept(
    tmp_path, write_suite, store
):
    """The MLflow UI's description of the suite's run and of its experiment is the report's answer."""
    from bench.store.tracking import NOTE_TAG

    suite = write_suite(tiny_suite(name="noted", models=[{"name": "ae-mlp"}, {"name": "vae-mlp"}]))
    assert main(["run", str(suite), "--tracking-uri", store, "--out", str(tmp_path / "o")]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("noted")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'suite'")
    note = parent.data.tags[NOTE_TAG]
    answers = (tmp_path / "o" / "report.md").read_text(encoding="utf-8")
    first_answer = next(line for line in answers.splitlines() if line.startswith("- compression ("))
    assert first_answer in note and "report/report.html" in note
    assert exp.tags[NOTE_TAG] == note

    client.set_experiment_tag(exp.experiment_id, NOTE_TAG, "my notes on this comparison")
    assert main(["report", "noted", "--tracking-uri", store, "--out", str(tmp_path / "o2")]) == 0
    assert client.get_experiment(exp.experiment_id).tags[NOTE_TAG] == "my notes on this comparison"
    assert first_answer in client.get_run(parent.info.run_id).data.tags[NOTE_TAG]
