"""Small and degenerate data: what the splits cannot give is refused before any training, naming
the field; a metric that fails anyway costs the run none of its other results; degenerate codes,
one-class labels and batches of one image are computed or reported as n/a, never crash a run."""

from __future__ import annotations

import dataclasses
import math

import mlflow
import pytest
import torch
from conftest import tiny_suite

import bench
from bench.cli import main
from bench.config import EvalConfig
from bench.data import batch_indices, make_image_data, make_synthetic, steps_per_epoch
from bench.metrics import METRICS, MetricFailure, data_problems, evaluate
from bench.models import build_model
from bench.suite import SuiteError

TINY = {"name": "synthetic", "train_size": 8, "test_size": 3}
# each asks more of the tiny splits than they hold; the message names what
TOO_SMALL = {
    "knn_acc": "the 10-nearest-neighbour classifier needs at least 10 training images; the training "
    "split has 8",
    "fid_domain_gmm": "the 10-component GMM (eval.gmm_components) is fitted to 8 training codes",
    "precision_domain": "the reference set has 3 images (the test split); it needs at least 4",
    "is_domain": "the held-out set the reference row scores has 4 images",
}


def small_suite(metrics: list[str], **eval_over) -> dict:
    cfg = {"metrics": metrics, "n_samples": 20, "n_real": 20, "kid_subset_size": 10, "isc_splits": 5}
    return tiny_suite(
        dataset=TINY,
        budget={"steps": 2, "batch_size": 4},
        eval={**cfg, **eval_over},
        models=[{"name": "ae-conv"}, {"name": "dcgan"}],
    )


def run_cli(args, capsys) -> tuple[int, list[str]]:
    rc = main(args)
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_sizes_the_splits_cannot_give_exit_2_naming_the_field_and_write_nothing(
    tmp_path, write_suite, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    metrics = ["recon_mse", "probe_acc", *TOO_SMALL]
    path = write_suite(small_suite(metrics))
    store = tmp_path / "store" / "m.db"
    rc, lines = run_cli(["run", str(path), "--tracking-uri", f"sqlite:///{store}"], capsys)
    assert rc == 2, lines
    assert len(lines) == len(TOO_SMALL), lines  # probe_acc (8 training images) and recon_mse are fine
    for name, text in TOO_SMALL.items():
        loc = f"eval.metrics.{metrics.index(name)}"
        assert any(line.startswith(f"{path}: {loc}: {name}: ") and text in line for line in lines), (
            name,
            lines,
        )
    assert not store.parent.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]
    # the static check passes (it cannot know the splits); with --data it says the same as run
    assert run_cli(["validate", str(path)], capsys)[0] == 0
    rc, again = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2 and again == lines


def test_bench_eval_checks_the_sizes_against_the_runs_splits(tmp_path, write_suite, store, capsys):
    suite = tiny_suite(
        dataset=TINY,
        budget={"steps": 2, "batch_size": 4},
        models=[{"name": "ae-mlp"}],
        eval={"metrics": ["psnr"]},
    )
    assert main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    rc, lines = run_cli(["eval", "tiny", "--metrics", "recon_mse,knn_acc", "--tracking-uri", store], capsys)
    assert rc == 2
    assert len(lines) == 1 and lines[0].endswith(
        "(ae-mlp/seed0): eval.metrics.1: knn_acc: the 10-nearest-neighbour classifier needs at least 10 "
        "training images; the training split has 8 (dataset.train_size)"
    )
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert "recon_mse" not in run.data.metrics  # nothing was computed


def _domain_on_two_images() -> dict:
    suite = small_suite(["recon_mse", "modes_covered"], n_real=16)
    suite["dataset"] = {"name": "synthetic", "train_size": 2, "test_size": 16}
    return suite


TRAINING_CANNOT = {  # suites whose splits something cannot train on, and the one line that says so
    "domain classifier on one image": (
        _domain_on_two_images,
        "eval.metrics.1: modes_covered: the domain classifier trains on the second half of the "
        "training split, 1 image; it needs at least 2",
    ),
    "batch norm on batches of one image": (
        lambda: tiny_suite(
            budget={"steps": 2, "batch_size": 1}, models=[{"name": "ae-mlp"}, {"name": "dcgan"}]
        ),
        "budget.batch_size: models.1 (dcgan) has batch norm, which cannot train on batches of one image",
    ),
    "a training split of one image": (
        lambda: tiny_suite(dataset={"name": "synthetic", "train_size": 1, "test_size": 4}),
        "dataset.train_size: the training split has 1 image; training needs at least 2 "
        "(batch norm and the fitted latent samplers learn from the spread of several)",
    ),
}


@pytest.mark.parametrize("case", TRAINING_CANNOT)
def test_what_the_splits_cannot_train_is_refused(case, write_suite, capsys):
    make, line = TRAINING_CANNOT[case]
    path = write_suite(make())
    rc, lines = run_cli(["validate", "--data", str(path)], capsys)
    assert rc == 2 and lines == [f"{path}: {line}"]


def test_data_problems_count_only_the_metrics_that_apply_to_the_models():
    data = make_synthetic(8, 3)
    cfg = EvalConfig(metrics=["knn_acc", "precision_domain"], n_samples=20, n_real=20)
    gan = [build_model("gan-mlp", {}, (1, 28, 28)).__class__]
    assert [i for i, _ in data_problems(cfg, data, gan)] == [1]  # knn_acc does not apply to a GAN
    assert [i for i, _ in data_problems(cfg, data)] == [0, 1]
    # splits large enough: nothing to say
    assert data_problems(cfg, make_synthetic(64, 16)) == []


def test_bench_evaluate_checks_the_request_before_any_work():
    model = build_model("ae-mlp", {}, (1, 28, 28))
    data = make_synthetic(8, 3)
    with pytest.raises(SuiteError) as e:
        bench.evaluate(model, data, ["recon_mse", "knn_acc"], n_samples=20)
    assert str(e.value).startswith("bench.evaluate: eval.metrics.1: knn_acc: the 10-nearest-neighbour")
    # the static checks bench validate runs: isc_splits above n_samples, IS without logits
    with pytest.raises(SuiteError, match=r"metrics.0: is_domain: eval.isc_splits \(30\) is larger"):
        bench.evaluate(model, make_synthetic(64, 64), ["is_domain"], n_samples=20, isc_splits=30)
    with pytest.raises(SuiteError, match="metrics.0: is: the Inception Score needs Inception's class logits"):
        bench.evaluate(model, make_synthetic(64, 64), ["is"], n_samples=20)


def test_bench_evaluate_gives_a_plugin_metric_check_the_whole_request():
    """A plugin metric's static check reads the suite bench validate would give it; bench.evaluate
    gives one built from the request: the dataset, the seed, the device, no models."""
    from bench.metrics.base import register_metric

    seen = []

    def check(suite):
        name = suite.dataset.name
        seen.append((suite.name, name, suite.seeds, suite.device, suite.models, suite.eval.n_samples))
        return [] if name == "synthetic" else [f"only for synthetic data, not {name}"]

    register_metric("test_checked", higher_is_better=True, description="test", check=check)(lambda ctx: 1.0)
    try:
        model = build_model("ae-mlp", {}, (1, 28, 28))
        out = bench.evaluate(model, {"name": "synthetic", "train_size": 64, "test_size": 16},
                             ["test_checked"], n_samples=20, seed=3)  # fmt: skip
        assert out["test_checked"].value == 1.0
        assert seen == [("evaluate", "synthetic", [3], "cpu", [], 20)]
        renamed = dataclasses.replace(make_synthetic(64, 16), name="mine")  # data loaded by the caller
        with pytest.raises(SuiteError, match="metrics.0: only for synthetic data, not mine"):
            bench.evaluate(model, renamed, ["test_checked"], n_samples=20)
    finally:
        METRICS._entries.pop("test_checked")  # the registry has no public removal


# --------------------------------------------------------------------------- a metric that fails


def test_a_failing_metric_costs_the_evaluation_none_of_the_others(monkeypatch):
    import bench.metrics.latent as latent

    def broken(*a, **k):
        raise RuntimeError("the k-NN broke")

    monkeypatch.setattr(latent, "knn_classify", broken)
    model = build_model("ae-mlp", {}, (1, 28, 28))
    data = make_synthetic(64, 32)
    cfg = EvalConfig(metrics=["recon_mse", "knn_acc", "psnr"])
    failed: dict[str, MetricFailure] = {}
    out = evaluate(model, data, cfg, 0, torch.device("cpu"), failed=failed)
    assert sorted(out) == ["psnr", "recon_mse"] and math.isfinite(out["psnr"].value)
    assert list(failed) == ["knn_acc"] and failed["knn_acc"].reason == "RuntimeError: the k-NN broke"
    assert "Traceback" in failed["knn_acc"].traceback and "broken" in failed["knn_acc"].traceback
    with pytest.raises(RuntimeError, match="the k-NN broke"):  # without ``failed``: raised, as before
        evaluate(model, data, cfg, 0, torch.device("cpu"))


def test_a_run_whose_metric_fails_finishes_with_the_others_and_says_why(
    tmp_path, write_suite, store, monkeypatch, capsys
):
    import bench.metrics.latent as latent

    def broken(*a, **k):
        raise RuntimeError("the k-NN broke")

    monkeypatch.setattr(latent, "knn_classify", broken)
    suite = tiny_suite(
        eval={"metrics": ["recon_mse", "knn_acc", "psnr"], "batch_size": 64},
        models=[{"name": "ae-mlp"}, {"name": "gan-mlp"}],
    )
    path = write_suite(suite)
    out = tmp_path / "rep"
    rc, lines = run_cli(["run", str(path), "--tracking-uri", store, "--out", str(out)], capsys)
    assert rc == 1  # not everything asked for was computed
    assert lines[-1].startswith("run ae-mlp/seed0: metric knn_acc failed: RuntimeError: the k-NN broke")
    client = mlflow.tracking.MlflowClient(store)
    exp = client.get_experiment_by_name("tiny")
    runs = {
        r.data.tags["label"]: r for r in client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")
    }
    ae = runs["ae-mlp"]
    assert ae.info.status == "FINISHED" and runs["gan-mlp"].info.status == "FINISHED"
    assert {"recon_mse", "psnr"} <= set(ae.data.metrics) and "knn_acc" not in ae.data.metrics
    assert ae.data.tags["metric_failed.knn_acc"] == "RuntimeError: the k-NN broke"
    trace = client.download_artifacts(ae.info.run_id, "metric_errors.txt", str(tmp_path))
    assert "Traceback" in open(trace).read() and "the k-NN broke" in open(trace).read()
    md = (out / "report.md").read_text()
    assert "## Runs and metrics that did not finish" in md
    assert "| tiny | ae-mlp | 0 | metric failed | knn\\_acc: RuntimeError: the k-NN broke |" in md
    # run again: the finished run is skipped, and its missing metric is still reported
    rc, lines = run_cli(["run", str(path), "--tracking-uri", store, "--out", str(out)], capsys)
    assert rc == 1 and lines[-1].startswith("run ae-mlp/seed0: metric knn_acc failed")
    # bench eval while it still fails: exit 1, the reason again; once mended, it fills the gap
    rc, lines = run_cli(["eval", "tiny", "--metrics", "knn_acc", "--tracking-uri", store], capsys)
    assert rc == 1 and any("metric knn_acc failed: RuntimeError: the k-NN broke" in x for x in lines)
    monkeypatch.undo()
    assert run_cli(["eval", "tiny", "--metrics", "knn_acc", "--tracking-uri", store], capsys)[0] == 0
    ae = client.get_run(ae.info.run_id)
    assert "knn_acc" in ae.data.metrics and "metric_failed.knn_acc" not in ae.data.tags
    rc, lines = run_cli(["run", str(path), "--tracking-uri", store, "--out", str(out)], capsys)
    assert rc == 0, lines
    assert "metric failed" not in (out / "report.md").read_text()


def test_the_reference_row_keeps_the_values_that_computed(tmp_path, monkeypatch, store):
    import bench.metrics.generative as generative
    from bench.run.reference import log_reference
    from bench.store.tracking import Tracker

    data = make_synthetic(64, 32)
    cfg = EvalConfig(metrics=["fid_domain", "kid_domain"], n_samples=20, n_real=20, kid_subset_size=10)
    kid = generative.SCORERS["kid"]

    def broken(*a, **k):
        raise RuntimeError("kid broke")

    monkeypatch.setitem(generative.SCORERS, "kid", broken)
    tracker = Tracker(store)
    run_id = log_reference(tracker, "refsuite", data, cfg, torch.device("cpu"))
    metrics = tracker.client.get_run(run_id).data.metrics
    assert "fid_domain" in metrics and "kid_domain" not in metrics
    monkeypatch.setitem(generative.SCORERS, "kid", kid)  # mended: the next call completes the row
    assert log_reference(tracker, "refsuite", data, cfg, torch.device("cpu")) == run_id
    assert {"fid_domain", "kid_domain"} <= set(tracker.client.get_run(run_id).data.metrics)


def test_a_reference_row_killed_while_written_is_completed_and_the_report_reads_a_finished_one(
    tmp_path, monkeypatch, store
):
    import subprocess

    import bench.metrics.generative as generative
    from bench.report.summary import load_store
    from bench.run.reference import log_reference
    from bench.store.tracking import RunLogger, Tracker

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))  # no reference result cached by another test
    data = make_synthetic(64, 32)
    cfg = EvalConfig(metrics=["fid_domain", "kid_domain"], n_samples=20, n_real=20, kid_subset_size=10)
    tracker, client = Tracker(store), mlflow.tracking.MlflowClient(store)
    dead = subprocess.Popen(["true"])
    dead.wait()

    def killed(self, status="FINISHED"):  # the process dies after the row's values, before it closes it
        raise KeyboardInterrupt

    def broken(*a, **k):
        raise RuntimeError("kid broke")

    def rows():
        exp = client.get_experiment_by_name("refsuite").experiment_id
        return client.search_runs([exp], "tags.`bench.kind` = 'reference'")

    with monkeypatch.context() as m:
        m.setattr(RunLogger, "finish", killed)
        m.setitem(generative.SCORERS, "kid", broken)
        for _ in range(2):  # two processes: the second starts its own row while the first's is alive
            with pytest.raises(KeyboardInterrupt):
                log_reference(tracker, "refsuite", data, cfg, torch.device("cpu"))
    killed_rows = rows()
    for r in killed_rows:  # both processes die
        client.set_tag(r.info.run_id, "bench.pid", str(dead.pid))
    assert [r.info.status for r in killed_rows] == ["RUNNING", "RUNNING"]
    assert all("fid_domain" in r.data.metrics and "kid_domain" not in r.data.metrics for r in killed_rows)

    run_id = log_reference(tracker, "refsuite", data, cfg, torch.device("cpu"))
    after = {r.info.run_id: r for r in rows()}
    assert len(after) == 2 and run_id in {r.info.run_id for r in killed_rows}  # no third row
    done = after.pop(run_id)
    (other,) = after.values()
    assert done.info.status == "FINISHED" and {"fid_domain", "kid_domain"} <= set(done.data.metrics)
    assert any(k.startswith("reference.") for k in done.data.params)  # the protocol, logged once
    assert other.info.status == "KILLED" and run_id in other.data.tags["failure_reason"]

    # a newer row still being written (its process alive) does not replace the finished one in a report
    live = tracker.start_reference("refsuite", {"bench.reference_key": "another"})
    live.metrics(0, {"fid_domain": 123.0})
    assert client.get_run(live.run_id).info.status == "RUNNING"
    refs = load_store(tracker, ["refsuite"]).references
    assert list(refs.run_id) == [run_id]


# --------------------------------------------------------------------------- degenerate data and codes


@pytest.mark.parametrize(("n", "bs", "steps"), [(65, 64, 1), (64, 64, 1), (66, 64, 2), (3, 2, 1), (1, 4, 1)])
def test_an_epoch_never_ends_with_a_batch_of_one_image(n, bs, steps):
    assert steps_per_epoch(n, bs) == steps
    sizes = [len(batch_indices(n, bs, s, 0, torch.device("cpu"))) for s in range(3 * steps)]
    assert all(size == sizes[0] or size > 1 for size in sizes), sizes
    if n > 1:
        assert min(sizes) > 1
    epoch = torch.cat([batch_indices(n, bs, s, 0, torch.device("cpu")) for s in range(steps)])
    assert len(set(epoch.tolist())) == len(epoch) >= n - 1  # each image once; at most one left out


def test_a_batch_norm_model_trains_on_a_split_that_leaves_one_image_over(
    tmp_path, write_suite, store, capsys
):
    suite = tiny_suite(
        dataset={"name": "synthetic", "train_size": 65, "test_size": 8},
        budget={"epochs": 2, "batch_size": 64},
        models=[{"name": "ae-conv"}],
    )
    rc = main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert run.data.metrics["budget_steps"] == 2  # one full batch per epoch


def test_an_images_budget_never_ends_on_a_batch_of_one_image(tmp_path, write_suite, store, capsys):
    suite = tiny_suite(budget={"images": 65, "batch_size": 64}, models=[{"name": "ae-conv"}])
    rc = main(["run", str(write_suite(suite)), "--tracking-uri", store, "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    assert run.data.metrics["budget_images"] == 66 and run.data.metrics["budget_steps"] == 2  # 64 + 2


def test_an_autoencoder_fitted_to_one_code_samples_about_it():
    model = build_model("ae-mlp", {}, (1, 28, 28))
    code = torch.randn(1, model.params.latent_dim)
    model.fit_latent_prior(code)
    assert torch.isfinite(model.prior_chol).all()
    torch.testing.assert_close(model.prior_mean, code[0])
    x = model.sample(4, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_a_constant_code_is_coded_and_its_rate_is_measured():
    model = build_model("ae-mlp", {}, (1, 28, 28))
    data = make_synthetic(64, 16)
    cfg = EvalConfig(metrics=["recon_mse", "bpp", "compression_ratio"], code_step=1000.0)  # every code 0
    out = evaluate(model, data, cfg, 0, torch.device("cpu"))
    assert set(out) == {"recon_mse", "bpp", "compression_ratio"}
    assert out["bpp"].value < 0.1 and math.isfinite(out["compression_ratio"].value)
    # the images decode to what the zero code decodes to
    with torch.inference_mode():
        zero = model.decode(torch.zeros(1, model.params.latent_dim)).clamp(0, 1)
        x = data.test_x.float() / 255
    torch.testing.assert_close(out["recon_mse"].value, float(((x - zero) ** 2).mean()), rtol=1e-5, atol=1e-6)


def test_one_class_labels_make_the_label_metrics_n_a():
    base = make_synthetic(64, 16)
    one = make_image_data(
        "one-class",
        base.train_x,
        torch.zeros_like(base.train_y),
        base.test_x,
        torch.zeros_like(base.test_y),
        1,
        source="test",
    )
    assert not one.has_labels and base.has_labels
    model = build_model("ae-mlp", {}, (1, 28, 28))
    names = ["recon_mse", "probe_acc", "knn_acc", "fid_domain"]
    assert all(METRICS.get(n).needs_labels for n in names[1:])
    out = evaluate(model, one, EvalConfig(metrics=names, n_samples=20, n_real=20), 0, torch.device("cpu"))
    assert list(out) == ["recon_mse"]  # n/a: one class has nothing to tell apart (no classifier trained)
