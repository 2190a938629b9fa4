"""`bench run --executor ray`: a real local Ray cluster (`ray start --head` on 127.0.0.1, 2 CPUs)
and a real `mlflow server` on a free loopback port, both started here. Skipped when Ray is not
installed (`pip install -e '.[ray]'`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.suite import expand, load_suite

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited: {proc.stdout.read() if proc.stdout else ''}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{what} did not start on port {port}")


def stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and everything it started."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
            if sig == first:
                continue
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    """A tracking server and a Ray head on this machine's loopback interface."""
    # short: Ray's socket paths live under its temp dir and must fit in 107 characters
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        BENCH_HOME=str(tmp / "home"),  # where the workers keep run folders (checkpoints, claims)
        OMP_NUM_THREADS="1",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        RAY_USAGE_STATS_ENABLED="0",
        # a cluster on the loopback interface, for this test only; a real cluster keeps Ray's
        # token authentication (the driver finds the token in ~/.ray/auth_token or $RAY_AUTH_TOKEN)
        RAY_AUTH_MODE="disabled",
    )
    mlflow_port, ray_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        + [
            "--backend-store-uri",
            f"sqlite:///{tmp / 'server.db'}",
            "--artifacts-destination",
            str(tmp / "art"),
        ]
        + ["--workers", "1"],
        env=env,
        stdout=(tmp / "server.log").open("w"),  # shown when a test fails
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(ray_port)]
        + [
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(tmp / "r"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_port(mlflow_port, server, "mlflow server")
        wait_port(ray_port, head, "ray start --head")
        yield {
            "uri": f"http://127.0.0.1:{mlflow_port}",
            "address": f"127.0.0.1:{ray_port}",
            "env": env,
            "home": tmp / "home",
            "log": tmp / "server.log",
        }
    finally:
        stop_group(head)
        stop_group(server, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def server_log(cluster: dict, lines: int = 60) -> str:
    """The tracking server's last lines, for a failed test's message."""
    text = cluster["log"].read_text(errors="replace").splitlines()[-lines:]
    return "\n--- mlflow server (last lines) ---\n" + "\n".join(text)


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def child_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'") if exp else []


def test_ray_results_equal_the_local_executors(cluster, tmp_path):
    smoke = yaml.safe_load((REPO / "suites" / "smoke.yaml").read_text())
    smoke.update(
        name="smoke-ray",
        dataset={"name": "synthetic", "train_size": 512, "test_size": 128},
        budget={"steps": 20, "batch_size": 64},
        eval={**smoke["eval"], "every": 10},
        device="cpu",
        resources={"cpus": 1},  # one thread per run in both executors: the same arithmetic
    )
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(smoke))
    local = f"sqlite:///{tmp_path / 'local.db'}"
    assert main(["run", str(path), "--tracking-uri", local, "--out", str(tmp_path / "r1")]) == 0

    remote = subprocess.run(
        bench_cmd("run", str(path), "--tracking-uri", cluster["uri"], "--out", str(tmp_path / "r2"))
        + ["--executor", "ray", "--ray-address", cluster["address"]],
        env=cluster["env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert remote.returncode == 0, remote.stderr + server_log(cluster)

    def metrics(uri):
        out = {}
        for r in child_runs(uri, "smoke-ray"):
            assert r.info.status == "FINISHED"
            key = (r.data.tags["label"], r.data.tags["seed"])
            assert key not in out, f"{key} recorded twice"
            out[key] = {k: v for k, v in r.data.metrics.items() if k in ("recon_mse", "psnr", "ssim")}
            out[key] |= {k: v for k, v in r.data.metrics.items() if k.startswith("train/")}
        return out

    a, b = metrics(local), metrics(cluster["uri"])
    assert len(b) == len(expand(load_suite(path))) == 6
    assert a == b
    pids = {r.data.tags["bench.pid"] for r in child_runs(cluster["uri"], "smoke-ray")}
    assert str(os.getpid()) not in pids  # Ray's workers trained them
    client = MlflowClient(cluster["uri"])
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("smoke-ray").experiment_id], "tags.`bench.kind` = 'suite'"
    )
    assert parent.data.tags["bench.executor"] == f"ray({cluster['address']})"
    assert {r.data.tags["mlflow.parentRunId"] for r in child_runs(cluster["uri"], "smoke-ray")} == {
        parent.info.run_id
    }


def test_a_killed_worker_is_retried_and_its_run_continues_from_the_stored_checkpoint(cluster, tmp_path):
    suite = tiny_suite(
        name="ray-kill",
        models=[{"name": "ae-mlp"}, {"name": "vae-mlp"}],
        budget={"steps": 300, "batch_size": 32},
        eval={"every": 100, "metrics": ["recon_mse"], "batch_size": 64},
        tracking={"log_every": 10},
        checkpoint={"every": 10},
        resources={"cpus": 1},
    )
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    uri = cluster["uri"]
    proc = subprocess.Popen(
        bench_cmd("run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "rep"))
        + ["--executor", "ray", "--ray-address", cluster["address"]],
        env=cluster["env"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        for r in child_runs(uri, "ray-kill"):
            folder = cluster["home"] / "runs" / r.data.tags["bench.config_hash"]
            stored = MlflowClient(uri).list_artifacts(r.info.run_id, "checkpoint")
            if r.info.status == "RUNNING" and stored and (folder / "checkpoint.pt").exists():
                victim = r
                os.kill(int(r.data.tags["bench.pid"]), signal.SIGKILL)  # the Ray worker running it
                # as if the retry ran on another node: only the store's copy of the checkpoint is left
                shutil.rmtree(folder)
                break
        time.sleep(0.1)
    assert victim is not None, "no run was caught mid-training"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + server_log(cluster)

    runs = child_runs(uri, "ray-kill")
    assert len(runs) == 2  # every run recorded once
    assert all(r.info.status == "FINISHED" for r in runs)
    (again,) = [r for r in runs if r.info.run_id == victim.info.run_id]  # the same MLflow run
    assert int(again.data.tags["bench.resumed_from_step"]) >= 10
    assert again.data.tags["bench.pid"] != victim.data.tags["bench.pid"]
    assert again.data.metrics["budget_steps"] == 300
    steps = [m.step for m in MlflowClient(uri).get_metric_history(again.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # no step logged twice, none after the end


def test_a_local_store_is_refused_for_a_cluster_it_cannot_reach(tmp_path, capsys, monkeypatch, write_suite):
    """The check behind the refusal: sqlite is fine when every node is this machine (the other
    tests), refused when a node is elsewhere. A second machine is faked in Ray's node list."""
    import ray

    from bench.run.executors import ExecutorError
    from bench.run.ray import RayExecutor

    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(
        ray,
        "nodes",
        lambda: [
            {"Alive": True, "NodeManagerAddress": "127.0.0.1"},
            {"Alive": True, "NodeManagerAddress": "10.11.12.13"},
        ],
    )
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    suite = load_suite(write_suite(tiny_suite()))
    ex = RayExecutor("10.11.12.1:6379")
    with pytest.raises(ExecutorError, match="a local store cannot be shared by the cluster's 2 nodes"):
        ex.start(suite, f"sqlite:///{tmp_path / 'm.db'}")
    ex.start(suite, "http://10.11.12.1:5000")  # a server every node reaches: fine
    suite = load_suite(write_suite({**tiny_suite(), "resources": {"cpus": 1, "gpus": 1}}))
    with pytest.raises(
        ExecutorError, match="asks for 1 CPUs and 1 GPUs; the Ray cluster has 4 CPUs and 0 GPUs"
    ):
        ex.start(suite, "http://10.11.12.1:5000")
    suite = load_suite(write_suite({**tiny_suite(), "device": "cuda"}))
    with pytest.raises(ExecutorError, match="resources.gpus: 0, but the runs are to use cuda"):
        ex.start(suite, "http://10.11.12.1:5000")


def test_a_task_stopped_by_a_store_error_is_run_again_and_its_own_errors_are_not(cluster, tmp_path):
    """Ray's retry policy as the executor sets it, on the real cluster: an error the tracking
    server returned is the store's fault, so the task runs again (and would continue from its
    checkpoint); any other error is the run's own and is reported after one attempt, with its
    message."""
    import types

    import ray

    from bench.run.executors import WorkerLost
    from bench.run.ray import RayExecutor

    marks = tmp_path / "attempts"
    marks.mkdir()

    def flaky(job):  # pickled by value into the worker: it counts its attempts in files
        from mlflow.exceptions import MlflowException

        n = len(list(marks.glob(f"{job.index}-*")))
        (marks / f"{job.index}-{n}").touch()
        if job.kind == "store" and n < job.fails:
            raise MlflowException("UNIQUE constraint failed: latest_metrics.key", error_code=1)
        if job.kind == "own":
            raise ValueError("width 0 is not a width")
        return types.SimpleNamespace(status="FINISHED", run_id=f"run-{job.index}")

    def job(i, kind, fails=0):
        spec = types.SimpleNamespace(run_name=f"m/seed{i}")
        return types.SimpleNamespace(index=i, kind=kind, fails=fails, spec=spec)

    env = types.SimpleNamespace(stop=lambda: False)
    ray.init(address=cluster["address"], logging_level="WARNING", log_to_driver=False)
    try:
        ex = RayExecutor(cluster["address"], max_retries=2)
        task = ex.task(1, 0, fn=flaky)
        recorded = {}
        ex._drive(task, [job(0, "store", fails=2)], env, lambda i, o: recorded.update({i: o.run_id}))
        assert recorded == {0: "run-0"}
        assert len(list(marks.glob("0-*"))) == 3  # two store errors, then the run went on

        with pytest.raises(WorkerLost, match=r"m/seed1: its Ray task failed with ValueError: width 0"):
            ex._drive(task, [job(1, "own")], env, lambda i, o: None)
        assert len(list(marks.glob("1-*"))) == 1  # the run's own error: never retried

        msg = r"m/seed2: its Ray task failed 3 times, the last time with MlflowException: UNIQUE"
        with pytest.raises(WorkerLost, match=msg):
            ex._drive(task, [job(2, "store", fails=99)], env, lambda i, o: None)
        assert len(list(marks.glob("2-*"))) == 3
    finally:
        ray.shutdown()


def test_a_ray_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys, write_suite):
    """Not ray.init's minutes of retries: exit 2 naming the address, and nothing written."""
    from bench.run.ray import unreachable

    port = free_port()  # closed again: nothing listens there
    assert unreachable(None) is None and unreachable("auto") is None
    assert "nothing answers at 127.0.0.1:" in unreachable(f"ray://127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert unreachable(f"127.0.0.1:{server.getsockname()[1]}") is None
    store = tmp_path / "store" / "mlflow.db"
    path = write_suite(tiny_suite())
    address = f"127.0.0.1:{port}"
    rc = main(["run", str(path), "--executor", "ray", "--ray-address", address, "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--ray-address {address}: cannot connect to the Ray cluster: nothing answers" in err
    assert not store.parent.exists()  # refused before the store is opened
