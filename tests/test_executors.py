"""`bench run --jobs N`: the runs of a suite in N worker processes, with the same results as one
after the other, each run recorded once, and the same stop/resume semantics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.run.driver import make_executor
from bench.run.executors import LocalExecutor, ProcessExecutor, available_cores

REPO = Path(__file__).parent.parent
SUITE = tiny_suite(
    name="jobs",
    seeds=[0, 1],
    budget={"steps": 12, "batch_size": 32},
    eval={"every": 6, "metrics": ["recon_mse", "psnr"], "batch_size": 64},
    models=[{"name": "vae-mlp"}, {"name": "gan-mlp"}],
    resources={"cpus": 1},  # one thread per run in every executor: identical arithmetic
)


def child_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")


def results(uri: str, experiment: str) -> dict[tuple[str, str], dict[str, float]]:
    out = {}
    for r in child_runs(uri, experiment):
        key = (r.data.tags["label"], r.data.tags["seed"])
        assert key not in out, f"{key} recorded twice"
        out[key] = {k: v for k, v in r.data.metrics.items() if k in ("recon_mse", "psnr", "train/loss")}
    return out


def test_jobs_2_records_each_run_once_with_the_results_of_a_sequential_run(tmp_path, write_suite):
    path = write_suite(SUITE)
    seq, par = f"sqlite:///{tmp_path / 'seq.db'}", f"sqlite:///{tmp_path / 'par.db'}"
    threads = torch.get_num_threads()
    assert main(["run", str(path), "--tracking-uri", seq, "--out", str(tmp_path / "r1")]) == 0
    assert torch.get_num_threads() == threads  # resources.cpus applied to the runs, then undone
    assert main(["run", str(path), "--tracking-uri", par, "--out", str(tmp_path / "r2"), "--jobs", "2"]) == 0

    a, b = results(seq, "jobs"), results(par, "jobs")
    assert len(b) == 4 and all(r.info.status == "FINISHED" for r in child_runs(par, "jobs"))
    assert a == b  # same seeds, same thread count: bit for bit
    pids = {r.data.tags["bench.pid"] for r in child_runs(par, "jobs")}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two worker processes did the work
    client = MlflowClient(par)
    (suite_run,) = client.search_runs(
        [client.get_experiment_by_name("jobs").experiment_id], "tags.`bench.kind` = 'suite'"
    )
    assert suite_run.data.tags["bench.executor"] == "jobs=2"
    assert suite_run.data.tags["bench.finished"] == "4"
    # a second --jobs run finds them all finished
    assert main(["run", str(path), "--tracking-uri", par, "--out", str(tmp_path / "r3"), "--jobs", "2"]) == 0
    assert len(child_runs(par, "jobs")) == 4


def test_threads_are_divided_between_worker_processes(tmp_path, write_suite):
    from bench.suite import load_suite

    suite = load_suite(write_suite(tiny_suite()))
    assert ProcessExecutor(2).threads(suite) == max(1, available_cores() // 2)
    assert ProcessExecutor(64).threads(suite) == 1
    suite = load_suite(write_suite({**tiny_suite(), "resources": {"cpus": 3}}))
    assert ProcessExecutor(2).threads(suite) == 3  # the suite's resources.cpus wins


def test_jobs_1_is_the_in_process_executor():
    assert isinstance(make_executor("local", 1, None, 3), LocalExecutor)
    assert isinstance(make_executor("local", None, None, 3), LocalExecutor)
    assert isinstance(make_executor("local", 3, None, 3), ProcessExecutor)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jobs", "0"], "--jobs: 0 is not a positive number of processes"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address: only with --executor ray"),
        (["--executor", "ray", "--jobs", "2"], "--jobs: not with --executor ray"),
    ],
)
def test_bad_executor_requests_exit_2_and_write_nothing(tmp_path, write_suite, capsys, args, message):
    path = write_suite(SUITE)
    db = tmp_path / "store" / "mlflow.db"
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{db}", *args]) == 2
    assert message in capsys.readouterr().err
    assert not db.parent.exists()


def test_sigterm_to_the_parent_stops_the_workers_and_a_rerun_resumes(tmp_path, write_suite):
    suite = {**SUITE, "budget": {"steps": 300, "batch_size": 32}, "checkpoint": {"every": 10}, "seeds": [0]}
    suite["models"] = [{"name": "ae-mlp"}, {"name": "vae-mlp"}]
    suite["tracking"] = {"log_every": 10}
    path = write_suite(suite)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(path), "--tracking-uri", uri, "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs_dir = tmp_path / ".bench" / "runs"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if runs_dir.is_dir() and any(runs_dir.glob("*/checkpoint.pt")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)  # to the parent only: it passes the request on to its workers
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    killed = [r for r in child_runs(uri, "jobs") if r.info.status == "KILLED"]
    assert killed, err
    assert all("interrupted" in r.data.tags["failure_reason"] for r in killed)
    assert not [r for r in child_runs(uri, "jobs") if r.info.status == "RUNNING"]

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    runs = child_runs(uri, "jobs")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert any(int(r.data.tags.get("bench.resumed_from_step", "0")) > 0 for r in runs)


def test_each_finished_run_reports_where_its_time_went(tmp_path, write_suite):
    path = write_suite(tiny_suite(name="cost", models=[{"name": "ae-mlp"}]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    (run,) = child_runs(uri, "cost")
    m = run.data.metrics
    for key in ("wall_seconds", "train_seconds", "eval_seconds", "tracking_seconds", "checkpoint_seconds"):
        assert m[key] >= 0, key
    assert m["train_seconds"] + m["eval_seconds"] + m["tracking_seconds"] <= m["wall_seconds"]
    assert m["tracking_seconds"] > 0 and m["eval_seconds"] > 0
    # and each metric's share of the evaluation, beside the AE's post-training fit of its Gaussian
    # (which encodes the training split the metrics share)
    parts = {k.removeprefix("eval_seconds."): v for k, v in m.items() if k.startswith("eval_seconds.")}
    # tiny_suite's metrics that have a value (a float code has no rate without eval.code_step)
    assert set(parts) == {"latent_fit", "recon_mse", "psnr", "ssim"}
    assert "compression_ratio" not in m
    assert all(v >= 0 for v in parts.values()) and sum(parts.values()) <= m["eval_seconds"]
    client = MlflowClient(uri)
    (suite_run,) = client.search_runs(
        [client.get_experiment_by_name("cost").experiment_id], "tags.`bench.kind` = 'suite'"
    )
    assert 0 < suite_run.data.metrics["data_seconds"] < suite_run.data.metrics["suite_seconds"]


def test_cache_entries_travel_through_the_store_to_another_machine(tmp_path, monkeypatch):
    """What a Ray run does for its workers: entries used here become artifacts of the suite run,
    and a worker with an empty cache finds them there instead of computing them again."""
    import torch

    from bench import cache
    from bench.store.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "here"))
    value = cache.cached_tensors("statistics", {"what": "test"}, lambda: {"mu": torch.arange(3.0)})
    run = tracker.start_suite("share", "name: share", 0)
    assert cache.publish_shared(run) == 1

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "there"))
    assert cache.fetch_shared(tracker, run.run_id) == 1
    computed = []
    got = cache.cached_tensors("statistics", {"what": "test"}, lambda: computed.append(1))
    assert computed == [] and torch.equal(got["mu"], value["mu"])
    assert cache.fetch_shared(tracker, run.run_id) == 0  # what is there already is kept


def test_executor_ray_without_ray_installed_exits_2_saying_how_to_install(
    tmp_path, write_suite, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    db = tmp_path / "store" / "mlflow.db"
    path = write_suite(SUITE)
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{db}", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray: Ray is not installed" in err and "pip install -e '.[ray]'" in err
    assert not db.parent.exists()
