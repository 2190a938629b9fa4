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


def test_sigterm_to_bench_ui_stops_the_server_it_started(tmp_path):
    """The UI server and its workers go with `bench ui`: none is left holding the port."""
    import signal
    import socket
    import time

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    uri = f"sqlite:///{tmp_path / 'ui.db'}"
    cmd = [sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # the server takes seconds to start; a few minutes on a loaded machine
            if listening() or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert listening(), "the UI server never listened"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for _ in range(60):  # the workers finish their shutdown
            if not listening():
                break
            time.sleep(0.5)
        assert not listening()
    finally:
        proc.kill()


def test_bench_eval_finds_moved_data_through_dataset_root_and_refuses_other_data(
    tmp_path, write_suite, capsys
):
    """A run's data that moved is named with --set dataset.root; data that differs from what the
    run was trained on is refused before anything is computed or logged."""
    import shutil

    from plugin_fixtures import write_images

    from bench.data import _load_cached

    write_images(tmp_path / "a", n_train=8, n_test=4)
    data = {"name": "imagefolder", "root": str(tmp_path / "a")}
    suite = tiny_suite(name="moved", dataset=data, models=[{"name": "ae-mlp"}])
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["run", str(write_suite(suite)), "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    _load_cached.cache_clear()  # as a new process would: the data is read from disk again
    capsys.readouterr()
    evaluate = ["eval", "moved", "--tracking-uri", uri, "--metrics", "psnr"]
    assert main(evaluate) == 2 and "folder not found" in capsys.readouterr().err
    moved = [*evaluate, "--set", f"dataset.root={tmp_path / 'b'}"]
    assert main(moved) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("moved").experiment_id
    (run,) = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    logged = run.data.metrics["psnr"]
    shutil.rmtree(tmp_path / "b")
    write_images(tmp_path / "b", n_train=8, n_test=4, seed=1)  # other images in the same place
    _load_cached.cache_clear()
    capsys.readouterr()
    assert main(moved) == 2
    assert "is not what the run was trained on" in capsys.readouterr().err
    assert client.get_run(run.info.run_id).data.metrics["psnr"] == logged


def test_bench_eval_changes_eval_settings_only(tmp_path, capsys):
    """A stored run keeps its data: --set outside eval is refused before the store is read."""
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    sets = ["--set", "dataset.test_size=16", "--set", "eval.n_samples=8"]
    rc = main(["eval", "anything", "--tracking-uri", uri, *sets])
    err = capsys.readouterr().err
    assert rc == 2 and "--set dataset.test_size: bench eval changes eval settings only" in err
    assert "eval.n_samples" not in err and not (tmp_path / "none.db").exists()


def test_output_cut_short_by_its_reader_is_no_failure():
    """`bench list | head -1`: the reader closes the pipe; bench finishes with its own exit code,
    and no BrokenPipeError traceback (before: exit 1 and a traceback)."""
    import subprocess
    import sys

    code = "import sys; from bench.cli import main; sys.exit(main(['list']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"datasets:")
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
