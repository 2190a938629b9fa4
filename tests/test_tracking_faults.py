"""The tracking store misbehaving: busy or restarting (retried with backoff), gone for good in
the middle of a run (the run finishes offline and is re-logged later), shared by two `bench run`
processes at once (no lock errors, no run trained twice); and `bench ui` staying on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import read_only_file, tiny_suite
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from bench.cli import build_parser, main
from bench.store.tracking import Tracker, TrackingError, TrackingLost
from bench.suite import expand, load_suite

REPO = Path(__file__).parent.parent


def env(**extra: str) -> dict[str, str]:
    # one intra-op thread: tiny CPU steps on a loaded machine are much faster without OpenMP waits
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


# --------------------------------------------------------------------------- retries


def flaky(failures: int, error: Exception):
    calls = []

    def fn(x):
        calls.append(x)
        if len(calls) <= failures:
            raise error
        return x * 2

    return fn, calls


def test_transient_failures_are_retried_then_reported_as_lost(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", retry_seconds=5)
    busy = MlflowException(
        "(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE
    )
    fn, calls = flaky(3, busy)
    assert tracker.call(fn, 21) == 42 and len(calls) == 4
    # a real mistake is not retried
    fn, calls = flaky(1, MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    with pytest.raises(MlflowException, match="bad param"):
        tracker.call(fn, 1)
    assert len(calls) == 1
    # a store that never comes back: retried for retry_seconds, then lost, naming the URI
    tracker.retry_seconds = 0.6
    refused = MlflowException(
        "API request to http://127.0.0.1:9/api failed with exception [Errno 111] Connection refused"
    )
    fn, calls = flaky(10**6, refused)
    with pytest.raises(
        TrackingLost, match=r"tracking store sqlite:///.* did not answer for 0.6 s .*Connection refused"
    ):
        tracker.call(fn, 1)
    assert len(calls) >= 2


def test_a_read_only_sqlite_store_is_not_retried_as_if_busy(tmp_path):
    """A read-only store stays read-only: the write fails at once, not after retry_seconds."""
    import sqlalchemy.exc

    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", retry_seconds=3600)
    ro = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("attempt to write a readonly database"))
    for error in (MlflowException(f"(raised as a result of Query-invoked autoflush) {ro}"), ro):
        calls = []

        def write(error=error, calls=calls):
            calls.append(1)
            if len(calls) > 1:  # the test fails now, not after retry_seconds
                raise AssertionError("a read-only store was retried")
            raise error

        with pytest.raises(type(error), match="readonly database"):
            tracker.call(write)


def test_the_start_up_check_waits_for_a_sqlite_store_another_writer_holds(tmp_path):
    """A locked sqlite store is busy, not unreachable: the check before training retries it (then
    goes on), where a store that cannot be reached is still refused at the first attempt."""
    import sqlalchemy.exc

    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", retry_seconds=3600)
    locked = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))
    fn, calls = flaky(2, locked)

    class Client:
        def search_experiments(self, max_results):
            return fn(max_results)

    tracker._client = Client()
    tracker.check()
    assert len(calls) == 3
    gone = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("unable to open database"))
    fn, calls = flaky(10**6, gone)
    with pytest.raises(TrackingError, match="cannot reach the tracking store .*unable to open database"):
        tracker.check()
    assert len(calls) == 1

def test_bench_eval_refuses_a_read_only_store_before_computing(tmp_path, capsys, monkeypatch):
    """Exit 2 naming the store, as `bench run` does, before any model is loaded or metric computed."""
    import bench.run.reeval as reeval

    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    assert main(["run", str(_tiny(tmp_path)), "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    before = db.read_bytes()
    monkeypatch.setattr(reeval, "plan_eval", lambda *a: pytest.fail("planned on a read-only store"))
    with read_only_file(db):
        rc = main(["eval", "tiny", "--metrics", "psnr", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and f"the tracking store {uri} is read-only here" in err, err
    assert db.read_bytes() == before


def test_a_store_in_a_folder_bench_cannot_write_is_still_read(tmp_path, capsys, monkeypatch):
    """The lock that serialises creating a new sqlite store cannot be taken beside an existing store in
    a read-only folder: a report still reads it."""
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    assert main(["run", str(_tiny(tmp_path)), "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    shutil.rmtree(tmp_path / ".bench")
    (tmp_path / ".bench").write_text("")  # no lock file can be made here, whoever runs the test
    rc = main(["report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "rep2")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "rep2" / "results.csv").is_file()

def _tiny(tmp_path: Path) -> Path:
    from conftest import tiny_suite

    path = tmp_path / "suite.yaml"
    budget = {"steps": 2, "batch_size": 32}
    suite = tiny_suite(models=[{"name": "ae-mlp"}], eval={"metrics": ["psnr"]}, budget=budget)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_a_resumed_run_neither_loses_nor_repeats_logged_steps(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracker.experiment_id("t")
    run_id = tracker.client.create_run(exp).info.run_id
    for step in (5, 10, 15):  # a killed run logged up to step 15; its checkpoint says step 10
        tracker.client.log_metric(run_id, "train/loss", float(step), step=step)
    tracker.client.log_metric(run_id, "recon_mse", 0.5, step=10)
    logger = tracker.resume_run(run_id)
    for step in (15, 20):  # what the resumed run logs again from step 10 on
        logger.losses(step, {"loss": float(step)})
        logger.metrics(step, {"recon_mse": 0.25})
    logger.finish()
    loss = [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "train/loss")]
    assert sorted(loss) == [(5, 5.0), (10, 10.0), (15, 15.0), (20, 20.0)]
    mse = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, "recon_mse"))
    assert mse == [(10, 0.5), (15, 0.25), (20, 0.25)]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


# --------------------------------------------------------------------------- two processes, one store


@pytest.mark.slow
def test_two_processes_share_one_sqlite_store(tmp_path):
    suite = tiny_suite(
        name="shared",
        models=[{"name": "ae-mlp"}, {"name": "vae-mlp"}],
        seeds=[0, 1],
        budget={"steps": 40, "batch_size": 32},
        eval={"metrics": ["recon_mse"]},
    )
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # a new store: both race to create it
    procs = [
        subprocess.Popen(
            bench("run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / f"rep{i}")),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        # no lock failure: a busy store may be retried (and says so), but nothing fails or crashes
        assert "Traceback" not in err and "FAILED" not in err and "did not answer" not in err, err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["bench.config_hash"] for r in runs}) == 4
    suites = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'suite'")
    assert [r.info.status for r in suites] == ["FINISHED", "FINISHED"]
    # every run was trained by exactly one of the two processes
    trained = []
    for out, _ in outs:
        (line,) = [x for x in out.splitlines() if x.startswith("4 runs: ")]
        trained.append(int(line.split()[2]))
    assert sum(trained) == 4
    # and both reports show all four runs
    for i in range(2):
        assert (tmp_path / f"rep{i}" / "results.csv").read_text().count("\n") == 3  # header + 2 models


# --------------------------------------------------------------------------- a server that goes away


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(db: Path, port: int) -> subprocess.Popen:
    """`bench ui` on a sqlite store: the MLflow server bench users run, in its own process group."""
    proc = subprocess.Popen(
        bench("ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)),
        env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "bench ui exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise AssertionError("bench ui did not start")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def listening_addresses(port: int) -> set[str]:
    return {
        c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
    }


def test_ui_binds_to_localhost_unless_told_otherwise():
    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    assert build_parser().parse_args(["ui", "--host", "0.0.0.0"]).host == "0.0.0.0"


@pytest.mark.slow
def test_store_lost_mid_run_finishes_offline_then_relogs(tmp_path, capsys, monkeypatch):
    db = tmp_path / "server" / "mlflow.db"
    port = free_port()
    server = start_ui(db, port)
    try:
        # `bench ui` listens on the loopback interface only
        assert listening_addresses(port) == {"127.0.0.1"}
        uri = f"http://127.0.0.1:{port}"
        suite = tiny_suite(
            name="lost",
            models=[{"name": "ae-mlp"}],
            budget={"steps": 160, "batch_size": 32},
            eval={"every": 40, "metrics": ["recon_mse"]},
            tracking={"log_every": 5, "retry_seconds": 2},
            checkpoint={"every": 10},
        )
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump(suite))
        (spec,) = expand(load_suite(path))
        work = tmp_path / "work"
        work.mkdir()
        folder = work / ".bench" / "runs" / spec.config_hash
        run = subprocess.Popen(
            bench("run", str(path), "--tracking-uri", uri),
            cwd=work,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not (folder / "checkpoint.pt").exists() and run.poll() is None:
            time.sleep(0.002)
        stop(server)  # the store goes away mid-run, for good
        out, err = run.communicate(timeout=600)
    finally:
        stop(server)

    assert run.returncode == 1, err
    assert f"its results and checkpoint are kept in {folder}" in err
    assert f"re-log them with: bench relog {folder} --tracking-uri '{uri}'" in err
    assert "did not answer for 2 s" in err
    journal = [json.loads(line) for line in (folder / "offline" / "journal.jsonl").read_text().splitlines()]
    assert journal[0]["op"] == "run" and journal[-1] == {**journal[-1], "op": "finish", "status": "FINISHED"}
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 160

    # while the store is down, `bench relog` says so and keeps the journal
    for k in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.setenv(k, os.environ.get(k, ""))  # restored after the test; bench may set them
        monkeypatch.delenv(k)
    assert main(["relog", str(folder)]) == 2
    assert f"cannot reach the tracking store {uri}: Connection refused" in capsys.readouterr().err
    assert (folder / "offline" / "journal.jsonl").exists()
    # the same store, reached through its database file, takes what waited, into the same run
    assert main(["relog", str(folder), "--tracking-uri", f"sqlite:///{db}"]) == 0
    relogged = capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{db}")
    (r,) = client.search_runs(
        [client.get_experiment_by_name("lost").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert r.info.status == "FINISHED" and f"re-logged into run {r.info.run_id}" in relogged
    # nothing lost: every loss interval, every evaluation, the final metrics and the model
    assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == list(range(5, 161, 5))
    assert [m.step for m in client.get_metric_history(r.info.run_id, "recon_mse")] == [40, 80, 120, 160]
    assert r.data.metrics["budget_steps"] == 160
    assert "model" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert not (folder / "offline" / "journal.jsonl").exists()


def test_loss_intervals_are_sent_in_few_batches_and_all_arrive(tmp_path, monkeypatch):
    """Every loss interval reaches the store, but a fast loop does not pay one store write per
    interval: intervals are held and sent together at most once per SEND_SECONDS."""
    from bench.store import tracking

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracker.start_suite("batches", "name: batches", 1)
    run = tracker.start_run(parent, {"label": "x"}, "x")
    sent = []
    real = run.client.log_batch
    monkeypatch.setattr(run.client, "log_batch", lambda *a, **kw: sent.append(kw) or real(*a, **kw))
    monkeypatch.setattr(tracking, "SEND_SECONDS", 3600.0)
    for step in range(1, 301):  # 300 intervals of 4 values: 1,200 values, over MLflow's 1,000 a batch
        run.losses(step, {"loss": step, "a": 1.0, "b": 2.0, "c": 3.0})
    run.flush()
    assert len(sent) == 2 and all(len(kw["metrics"]) <= tracking.MAX_BATCH for kw in sent)
    history = MlflowClient(tracker.uri).get_metric_history(run.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 301)]
    run.finish()
    parent.finish()


# --------------------------------------------------------------------------- damaged journals

HEADER = {"op": "run", "uri": "sqlite:///x.db", "run_id": None, "experiment": "relogged", "run_name": "r"}
LOSS = {"op": "metrics", "values": {"train/loss": 1.0}, "step": 2, "timestamp": 1}


def without(key: str) -> dict:
    return {k: v for k, v in HEADER.items() if k != key}


@pytest.mark.parametrize(
    "lines, said",
    [
        ([without("uri"), LOSS], "line 1: the header (op 'run') has no 'uri'"),
        ([without("experiment"), LOSS], "line 1: the header (op 'run') has no 'experiment'"),
        ([[1, 2], HEADER], "line 1: a list, not a journal entry"),
        ([HEADER, LOSS, "hello"], "line 3: a string, not a journal entry"),
        ([HEADER, LOSS, {**LOSS, "step": "abc"}], "entry 2: 'step' must be an integer, not a string"),
        ([HEADER, {**LOSS, "values": {"train/loss": "x"}}], "entry 1: 'values' must map metric names"),
        ([HEADER, LOSS, {"op": "finish", "status": ["FINISHED"]}], "entry 2: 'status' must be one of"),
        # the right types, values the store refuses partway through a replay
        (
            [HEADER, LOSS, {**LOSS, "values": {"a": 10**400}}],
            "entry 2: 'values' must map metric names to numbers: 'a' is a number beyond a float's range",
        ),
        ([HEADER, LOSS, {**LOSS, "step": 2**70}], "entry 2: 'step' is beyond a 64-bit integer"),
        ([HEADER, LOSS, {**LOSS, "values": {"loss?": 1.0}}], "entry 2: metrics name 'loss?': Invalid value"),
        ([HEADER, {"op": "params", "params": {"a\nb": "1"}}], "entry 1: params name 'a\\nb': Invalid value"),
    ],
    ids=["no-uri", "no-experiment", "list", "string", "step", "value", "status", "huge-value", "huge-step",
         "metric-name", "param-name"],  # fmt: skip
)
def test_relog_refuses_a_damaged_journal_before_the_store_is_touched(lines, said, tmp_path, capsys):
    folder = tmp_path / "run" / "offline"
    folder.mkdir(parents=True)
    journal = folder / "journal.jsonl"
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "mlflow.db"
    # without --tracking-uri where the header lacks its store: the journal's own store is needed
    flag = [] if "'uri'" in said else ["--tracking-uri", f"sqlite:///{db}"]
    rc = main(["relog", str(folder), *flag])
    err = capsys.readouterr().err
    assert rc == 2 and f"{journal}: {said}" in err, err
    if said.startswith("entry"):  # and the line of the file it is on
        assert f"(line {len(lines)})" in err, err
    assert journal.is_file() and not (folder / "journal.relogged.jsonl").exists()  # kept for a look
    assert not db.exists()  # refused before the store was opened: no run was created


def test_relog_at_the_start_of_bench_run_refuses_a_damaged_journal_too(tmp_path):
    """``bench run`` re-logs a pending journal itself (``relog``): the same checks, before any write."""
    from bench.store.relog import JournalError, relog

    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / "journal.jsonl").write_text(f"{json.dumps(HEADER)}\n{json.dumps({**LOSS, 'step': 'abc'})}\n")
    with pytest.raises(JournalError, match=r"journal.jsonl: entry 1: 'step' must be an integer.* \(line 2\)"):
        relog(folder, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert not (tmp_path / "mlflow.db").exists() and (folder / "journal.jsonl").is_file()


def test_an_entry_appended_after_a_torn_line_is_kept(tmp_path):
    """A kill mid-write leaves a fragment without its newline; the run, resumed while the store is
    still away, appends to the same journal: its entries must not run on from the fragment."""
    from bench.store.journal import Journal, read_journal

    header = {"uri": "http://store", "experiment": "exp", "run_id": None, "run_name": "r"}
    Journal(tmp_path, header).add("metrics", values={"loss": 1.0}, step=1, timestamp=1)
    with open(tmp_path / "journal.jsonl", "a", encoding="utf-8") as f:
        f.write('{"op": "metrics", "values": {"loss": 2.')  # killed here
    Journal(tmp_path, header).add("metrics", values={"loss": 3.0}, step=3, timestamp=3)
    steps = [e["step"] for e in read_journal(tmp_path) if e["op"] == "metrics"]
    assert steps == [1, 3]


@pytest.mark.parametrize("left", ["", '{"op": "run", "uri": "http://st'], ids=["empty", "torn-header"])
def test_a_journal_whose_header_a_kill_tore_gets_its_header_again(left, tmp_path):
    from bench.store.journal import Journal, read_journal

    (tmp_path / "journal.jsonl").write_text(left)
    header = {"uri": "http://store", "experiment": "exp", "run_id": None, "run_name": "r"}
    Journal(tmp_path, header).add("metrics", values={"loss": 3.0}, step=3, timestamp=3)
    head, *rest = read_journal(tmp_path)
    assert head["op"] == "run" and head["uri"] == "http://store" and [e["step"] for e in rest] == [3]


def test_a_pid_tag_no_process_can_have_is_a_dead_process():
    """A run's pid tag past the range of pids (a damaged tag) names no live process: the run it
    tags is closed like any other left RUNNING, instead of every `bench run` failing on it."""
    import platform

    from bench.store.tracking import process_alive, process_tags

    here = platform.node()
    assert process_alive(process_tags())
    for pid in ("9" * 20, "-1" + "0" * 25, "zero", ""):
        assert not process_alive({"bench.host": here, "bench.pid": pid}), pid
