"""Interrupted suites lose nothing: Ctrl-C checkpoints and marks the run KILLED; kill -9 at any
moment, then `bench run` again, skips finished runs and continues the interrupted one from its
last checkpoint, ending with exactly the metrics of an uninterrupted run (CPU, same seed).

One scenario, run once for the module, with real `bench run` subprocesses on real sqlite stores:
an uninterrupted baseline; then SIGINT during the second run, rerun, SIGKILL later in that
same run, rerun to the end.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.run.checkpoint import bench_home
from bench.suite import expand, load_suite

REPO = Path(__file__).parent.parent
SUITE = tiny_suite(
    name="resume",
    dataset={"name": "synthetic", "train_size": 256, "test_size": 64},
    budget={"steps": 160, "batch_size": 32},
    eval={"every": 20, "metrics": ["recon_mse", "psnr"], "batch_size": 64},
    models=[{"name": "ae-mlp", "label": "first"}, {"name": "vae-mlp"}],
    tracking={"log_every": 5},
    checkpoint={"every": 10},
)


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def env() -> dict[str, str]:
    # one intra-op thread: on a shared, loaded machine OpenMP threads that wait on each other
    # make tiny CPU steps 20x slower; the baseline and the interrupted runs use the same setting
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def checkpoint_step(path: Path, last: tuple[int, int] | None) -> tuple[int | None, tuple[int, int] | None]:
    """The step of the checkpoint at ``path`` if it changed since ``last`` (inode, mtime)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, last
    key = (st.st_ino, st.st_mtime_ns)
    if key == last:
        return None, last
    try:
        return int(torch.load(path, weights_only=True)["step"]), key
    except (FileNotFoundError, EOFError, RuntimeError):  # replaced while we read it: look again
        return None, last


def interrupt_at(cmd: list[str], ckpt: Path, min_step: int, sig: int) -> tuple[subprocess.Popen, int]:
    """Start ``cmd``; send ``sig`` as soon as ``ckpt`` holds a step >= ``min_step``."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, step = None, None
    while proc.poll() is None:
        s, last = checkpoint_step(ckpt, last)
        if s is not None and s >= min_step:
            step = s
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    proc.wait(timeout=300)
    assert step is not None, (
        f"the run ended before its checkpoint reached step {min_step}:\n{proc.stderr.read()}"
    )
    return proc, step


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    base_uri = f"sqlite:///{tmp / 'base' / 'mlflow.db'}"
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    first, second = expand(load_suite(path))
    ckpt = bench_home(uri) / "runs" / second.config_hash / "checkpoint.pt"
    run = bench("run", str(path), "--tracking-uri", uri, "--out", str(tmp / "rep"))
    out: dict = {"tmp": tmp, "uri": uri, "base_uri": base_uri, "ckpt": ckpt, "specs": (first, second)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (see env())
    try:
        assert main(["run", str(path), "--tracking-uri", base_uri, "--out", str(tmp / "base-rep")]) == 0
    finally:
        torch.set_num_threads(threads)

    # 1. Ctrl-C during the second run
    proc, signalled = interrupt_at(run, ckpt, 30, signal.SIGINT)
    out["sigint"] = {
        "rc": proc.returncode,
        "stderr": proc.stderr.read(),
        "signalled_at": signalled,
        "ckpt_step": torch.load(ckpt, weights_only=True)["step"],
        "runs": runs_of(uri),
        "suites": suite_runs(uri),
    }
    # 2. run again, and kill -9 later in the same run
    proc, killed = interrupt_at(run, ckpt, out["sigint"]["ckpt_step"] + 30, signal.SIGKILL)
    out["sigkill"] = {
        "rc": proc.returncode,
        "ckpt_step": torch.load(ckpt, weights_only=True)["step"],
        "runs": runs_of(uri),
    }
    # 3. run again to the end
    last = subprocess.run(run, env=env(), capture_output=True, text=True)
    out["last"] = {"rc": last.returncode, "stdout": last.stdout, "stderr": last.stderr}
    return out


def runs_of(uri: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resume")
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'"):
        out.setdefault(r.info.run_name, []).append(r)
    return out


def suite_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resume")
    return client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'suite'")


def test_ctrl_c_checkpoints_the_run_and_marks_it_killed(scenario):
    s = scenario["sigint"]
    assert s["rc"] == 130, s["stderr"]
    assert "interrupted: the current run is marked KILLED and keeps its checkpoint" in s["stderr"]
    # the checkpoint is of the step where the loop stopped, not an older periodic one
    assert s["ckpt_step"] >= s["signalled_at"] and s["ckpt_step"] < 160
    (first,) = s["runs"]["first/seed0"]
    (second,) = s["runs"]["vae-mlp/seed0"]
    assert first.info.status == "FINISHED"
    assert second.info.status == "KILLED"
    assert second.data.tags["failure_reason"] == (
        f"interrupted at step {s['ckpt_step']}; `bench run` again resumes it"
    )
    assert [r.info.status for r in s["suites"]] == ["KILLED"]


def test_kill_9_then_rerun_skips_finished_and_resumes_the_interrupted_run(scenario):
    k, last = scenario["sigkill"], scenario["last"]
    assert k["rc"] == -signal.SIGKILL
    (killed,) = k["runs"]["vae-mlp/seed0"]
    assert killed.info.status == "RUNNING"  # what kill -9 leaves behind
    assert last["rc"] == 0, last["stderr"]
    runs = runs_of(scenario["uri"])
    # the finished run was not trained again, the interrupted one was continued, not restarted
    assert {name: len(rs) for name, rs in runs.items()} == {"first/seed0": 1, "vae-mlp/seed0": 1}
    (run,) = runs["vae-mlp/seed0"]
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert int(run.data.tags["bench.resumed_from_step"]) == k["ckpt_step"] > 0
    assert run.data.metrics["budget_steps"] == 160
    assert "failure_reason" not in run.data.tags  # the Ctrl-C's reason went with the resume
    assert "1 resumed from a checkpoint, 1 skipped" in last["stdout"]
    assert "first/seed0: skipped (finished earlier)" in last["stderr"]
    # the run finished, so its checkpoint is gone; the suite runs left open were closed
    assert not scenario["ckpt"].exists()
    statuses = sorted(r.info.status for r in suite_runs(scenario["uri"]))
    assert statuses == ["FINISHED", "KILLED", "KILLED"]


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(scenario):
    base = MlflowClient(scenario["base_uri"])
    client = MlflowClient(scenario["uri"])
    (b,) = runs_of(scenario["base_uri"])["vae-mlp/seed0"]
    (r,) = runs_of(scenario["uri"])["vae-mlp/seed0"]
    for key in ("recon_mse", "psnr", "train/loss", "train/kl"):
        assert r.data.metrics[key] == b.data.metrics[key], key
        # the whole history: no value lost or logged twice around the interruptions
        hb = [(m.step, m.value) for m in base.get_metric_history(b.info.run_id, key)]
        hr = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
        assert sorted(hr) == sorted(hb), key
    assert [m.step for m in client.get_metric_history(r.info.run_id, "recon_mse")] == list(range(20, 161, 20))
    sb = torch.load(
        base.download_artifacts(b.info.run_id, "model/state_dict.pt", str(scenario["tmp"])), weights_only=True
    )
    (scenario["tmp"] / "state_dict.pt").unlink()
    sr = torch.load(
        client.download_artifacts(r.info.run_id, "model/state_dict.pt", str(scenario["tmp"])),
        weights_only=True,
    )
    assert sb.keys() == sr.keys() and all(torch.equal(sb[k], sr[k]) for k in sb)


# --------------------------------------------------------------------------- in-process


def small(**over) -> dict:
    return tiny_suite(models=[{"name": "ae-mlp"}], **over)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_restart_trains_everything_again(tmp_path, write_suite, store, capsys):
    path = write_suite(small())
    args = ["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]
    assert main(args) == 0
    assert main(args) == 0
    assert "0 trained, 0 resumed from a checkpoint, 1 skipped" in capsys.readouterr().out
    assert main([*args, "--restart"]) == 0
    runs = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert not any("bench.resumed_from_step" in r.data.tags for r in runs)


class Payload:
    """Unpickling this runs a command: what a checkpoint must never be able to do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoints_are_loaded_with_weights_only(tmp_path, write_suite, store, caplog):
    path = write_suite(small(checkpoint={"every": 2}))
    (spec,) = expand(load_suite(path))
    ckpt = bench_home(store) / "runs" / spec.config_hash / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    pwned = tmp_path / "pwned"
    with open(ckpt, "wb") as f:
        pickle.dump({"run_id": "x", "step": 3, "trainer": Payload(pwned)}, f)
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 0
    assert not pwned.exists()
    assert f"{ckpt}: cannot be loaded safely" in caplog.text
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert run.info.status == "FINISHED" and "bench.resumed_from_step" not in run.data.tags


def test_a_run_killed_before_its_first_checkpoint_is_trained_again_in_the_same_run(
    tmp_path, write_suite, store, one_thread
):
    path = write_suite(small(budget={"steps": 300, "batch_size": 32}, checkpoint={"every": None}))
    (spec,) = expand(load_suite(path))
    started = bench_home(store) / "runs" / spec.config_hash / "run.json"  # written once the run exists
    proc = subprocess.Popen(
        bench("run", str(path), "--tracking-uri", store),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not started.exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    (killed,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    assert killed.info.status == "RUNNING"

    torch.set_num_threads(1)
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 0
    (run,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")  # still one run: no duplicate
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["bench.resumed_from_step"] == "0" and run.data.metrics["budget_steps"] == 300
    assert run.data.params["params.latent_dim"] == "64"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(2, 301, 2))  # every interval once, whatever the killed run logged


def test_kill_9_of_bench_run_jobs_stops_its_workers_and_checkpoints_their_runs(
    tmp_path, write_suite, store, one_thread
):
    import psutil

    # a budget it never reaches: the worker must stop because its parent died, not because it finished
    path = write_suite(small(budget={"steps": 100_000, "batch_size": 32}, checkpoint={"every": 10}))
    (spec,) = expand(load_suite(path))
    ckpt = bench_home(store) / "runs" / spec.config_hash / "checkpoint.pt"
    proc = subprocess.Popen(
        bench("run", str(path), "--tracking-uri", store, "--jobs", "2"),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(proc.pid)
    workers: list = []
    try:
        while not ckpt.exists():  # the worker is training
            assert proc.poll() is None, "bench run ended early"
            time.sleep(0.01)
        workers = parent.children()
        assert len(workers) >= 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, "workers outlived their bench run"
    finally:
        for w in workers:
            if w.is_running():
                w.kill()
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    # stopped as after Ctrl-C: checkpointed at the step it stopped, KILLED, resumable from there
    step = torch.load(ckpt, weights_only=True)["step"]
    assert run.info.status == "KILLED" and step > 0
    assert run.data.tags["failure_reason"] == f"interrupted at step {step}; `bench run` again resumes it"


def test_a_killed_restart_is_closed_when_the_finished_run_is_skipped(
    tmp_path, write_suite, store, one_thread
):
    path = write_suite(small(budget={"steps": 150, "batch_size": 32}, checkpoint={"every": 25}))
    args = ["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]
    assert main(args) == 0
    (spec,) = expand(load_suite(path))
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    (done,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    ckpt = bench_home(store) / "runs" / spec.config_hash / "checkpoint.pt"
    assert not ckpt.exists()  # removed when the run finished
    # --restart trains it again, in a new run, and is killed while it trains
    proc = subprocess.Popen(
        bench(*args, "--restart"), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not ckpt.exists():
        assert proc.poll() is None, "bench run --restart ended early"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (again,) = [
        r for r in client.search_runs([exp], "tags.`bench.kind` = 'run'") if r.info.run_id != done.info.run_id
    ]
    assert again.info.status == "RUNNING"  # what kill -9 leaves behind

    assert main(args) == 0  # skips the finished run, and closes the attempt that will never end
    runs = {r.info.run_id: r for r in client.search_runs([exp], "tags.`bench.kind` = 'run'")}
    assert runs[done.info.run_id].info.status == "FINISHED"
    assert runs[again.info.run_id].info.status == "KILLED"
    assert runs[again.info.run_id].data.tags["failure_reason"] == (
        f"its bench process ended without closing it (killed); run {done.info.run_id} of the same config "
        "finished and stands"
    )


def test_a_skipped_finished_run_leaves_a_restart_attempt_of_another_node_running(
    tmp_path, write_suite, store
):
    """Ray's ``exclusive`` (one attempt per task) says nothing of another ``bench run --restart``:
    its attempt, training on another node, is not closed when a finished run is skipped."""
    from bench.run.checkpoint import RunFolder
    from bench.run.context import RunOptions, StopRequest, SuiteEnv
    from bench.run.lifecycle import run_or_skip
    from bench.store.tracking import Tracker

    path = write_suite(small(budget={"steps": 2, "batch_size": 32}))
    assert main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    (done,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    tags = {k: v for k, v in done.data.tags.items() if k.startswith("bench.") or k in ("label", "seed")}
    live = client.create_run(exp, tags={**tags, "bench.host": "another-node", "bench.pid": "4242"})
    suite = load_suite(path)
    (spec,) = expand(suite)
    ray = RunOptions(exclusive=True)
    env = SuiteEnv(suite, None, Tracker(store), None, torch.device("cpu"), ray, StopRequest(), None)
    outcome = run_or_skip(spec, RunFolder(bench_home(store), spec.config_hash), env)
    assert outcome.skipped and outcome.run_id == done.info.run_id
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
