"""Report rendering on a store written directly with MlflowClient, in bench's data contract: three
seeds, a generation metric, a real-data reference run, several suites in one report."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from bench.metrics import METRICS
from bench.metrics.base import Metric
from bench.report import write_report
from bench.store.tracking import Tracker

GEN = "sample_score_test"  # a generation metric of this module only, so it means what these tests say


@pytest.fixture(scope="module")
def generation_metric():
    """A lower-is-better metric for every family, registered for this module only: the report picks
    it as the main generation metric (the first present that applies to GANs) for quality vs cost."""
    METRICS.add(GEN, Metric(GEN, lambda ctx: 0.0, False, ("ae", "vae", "gan"), "test generation metric"))
    try:
        yield GEN
    finally:
        METRICS._entries.pop(GEN)  # the registry has no public removal; tests must not leak entries


# per label: family, and per seed (recon_mse, the generation metric, train_seconds); gan has no recon_mse
VALUES = {
    "ae-x": ("ae", [(0.010, 40.0, 10.0), (0.012, 42.0, 11.0), (0.014, 44.0, 12.0)]),
    "vae-x": ("vae", [(0.020, 30.0, 12.0), (0.021, 30.5, 13.0), (0.022, 31.0, 14.0)]),
    "gan-x": ("gan", [(None, 20.0, 30.0), (None, 26.0, 33.0), (None, 23.0, 36.0)]),
}
REF_FID = 1.25


def _suite_yaml(name: str, baseline: str | None) -> str:
    return yaml.safe_dump(
        {
            "name": name,
            "models": [
                {"name": "ae-mlp", "label": "ae-x"},
                {"name": "vae-mlp", "label": "vae-x"},
                {"name": "gan-mlp", "label": "gan-x"},
            ],
            "report": {"baseline": baseline},
        },
        sort_keys=False,
    )


def _write_suite(client: MlflowClient, name: str, baseline: str | None, with_reference: bool) -> None:
    exp = client.create_experiment(name)
    parent = client.create_run(exp, run_name=name, tags={"bench.kind": "suite", "bench.suite": name})
    client.log_text(parent.info.run_id, _suite_yaml(name, baseline), "suite.yaml")
    client.set_terminated(parent.info.run_id, "FINISHED")
    for label, (family, seeds) in VALUES.items():
        for seed, (mse, score, secs) in enumerate(seeds):
            tags = {
                "bench.kind": "run",
                "label": label,
                "model": label,
                "family": family,
                "seed": str(seed),
                "mlflow.parentRunId": parent.info.run_id,
                f"provenance.{GEN}": f'{{"n_fake": 100, "n_real": 100, "split": "test", "seed": {seed}}}',
            }
            run = client.create_run(exp, run_name=f"{label}/seed{seed}", tags=tags)
            rid = run.info.run_id
            for step, scale in [(10, 2.0), (20, 1.0)]:  # the history: every eval.every steps
                client.log_metric(rid, GEN, score * scale, step=step)
                if mse is not None:
                    client.log_metric(rid, "recon_mse", mse * scale, step=step)
                client.log_metric(rid, "train/loss", scale + seed, step=step)
            client.log_metric(rid, "train_seconds", secs, step=20)
            client.log_metric(rid, "budget_steps", 20, step=20)
            client.set_terminated(rid, "FINISHED")
    if with_reference:
        ref = client.create_run(
            exp,
            run_name="reference",
            tags={
                "bench.kind": "reference",
                "label": "reference",
                "family": "data",
                f"provenance.{GEN}": '{"n_fake": 100, "n_real": 100, "split": "train vs test"}',
            },
        )
        client.log_metric(ref.info.run_id, GEN, REF_FID)
        client.set_terminated(ref.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory, generation_metric) -> str:
    root = tmp_path_factory.mktemp("render_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    _write_suite(client, "synth", None, with_reference=True)
    _write_suite(client, "synth2", "gan-x", with_reference=False)
    return uri


@pytest.fixture(scope="module")
def single(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    summary, paths = write_report(Tracker(store), ["synth"], out)
    return summary, out


def test_three_seed_intervals_and_welch(single):
    summary, _ = single
    t = summary.table.set_index("label")
    q = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # t_{0.975, 2}, closed form for 2 degrees of freedom
    # ae-x scores 40, 42, 44: sd 2 -> half-width 2 q / sqrt(3)
    assert t.loc["ae-x", f"{GEN}_ci95"] == pytest.approx(2 * q / math.sqrt(3))
    assert t.loc["gan-x", f"{GEN}_ci95"] == pytest.approx(3 * q / math.sqrt(3))  # 20, 26, 23: sd 3
    assert t.loc["ae-x", "recon_mse_ci95"] == pytest.approx(0.002 * q / math.sqrt(3))
    assert t.loc["ae-x", "baseline"] and summary.baselines == {"synth": "ae-x"}  # default: the first model
    # the generation metric against the baseline ae-x (42, sd 2): vae-x (30.5, sd 0.5) and gan-x
    # (23, sd 3) both differ; the n/a recon_mse of gan-x is never tested
    assert t.loc["vae-x", f"{GEN}_significant"] and t.loc["gan-x", f"{GEN}_significant"]
    assert math.isnan(t.loc["gan-x", "recon_mse_p"]) and not t.loc["gan-x", "recon_mse_applies"]
    assert t.loc["gan-x", f"{GEN}_best"] and t[f"{GEN}_best"].sum() == 1  # lower is better
    assert t.loc["ae-x", "recon_mse_best"]


def test_reference_row_and_generation_figure(single):
    _, out = single
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| real data (reference) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # only in the table of the metric it has (model, family, seeds, the generation metric)
    assert cells == ["real data (reference)", "data", "—", "1.25"]
    assert sum(line.startswith("| real data (reference) |") for line in md.splitlines()) == 1
    # and in results.csv, marked as the reference
    res = pd.read_csv(out / "results.csv")
    ref = res[res.reference]
    assert list(ref.label) == ["real data (reference)"] and ref[f"{GEN}_mean"].iloc[0] == REF_FID
    assert list(res.label[~res.reference]) == list(VALUES)
    assert (out / "quality_vs_cost.png").stat().st_size > 0
    assert "Quality against cost" in md and f"main generation metric ({GEN})" in md
    assert (out / "reference.csv").exists()
    assert '"split": "train vs test"' in md  # the reference run's provenance
    # the runs' provenance, merged: shared fields once, differing ones as their distinct values
    merged = '{"n_fake": "100", "n_real": "100", "split": "test", "seed": "0 \\| 1 \\| 2"}'
    assert f"| synth | {GEN} | runs | `{merged}` |" in md
    html = (out / "report.html").read_text()
    assert '<tr class="reference">' in html and "real data (reference)" in html
    assert html.count('<tr class="model') == 3 * 3  # the compression, other-metric and cost tables


def test_several_suites_in_one_report(store, tmp_path):
    summary, paths = write_report(Tracker(store), ["synth", "synth2"], tmp_path, log_to_store=False)
    t = summary.table
    assert list(zip(t.suite, t.label)) == [(s, lab) for s in ["synth", "synth2"] for lab in VALUES]
    # each suite has its own baseline, from its stored config
    assert summary.baselines == {"synth": "ae-x", "synth2": "gan-x"}
    assert list(t.baseline) == [True, False, False, False, False, True]
    # best and significance are decided within a suite
    assert t[f"{GEN}_best"].sum() == 2
    synth2 = t[t.suite == "synth2"].set_index("label")
    assert math.isnan(synth2.loc["gan-x", f"{GEN}_p"]) and synth2.loc["ae-x", f"{GEN}_significant"]
    md = (tmp_path / "report.md").read_text()
    assert "\n| suite | model | family | seeds |" in md
    assert "| synth2 | gan-x (baseline) | gan | 3 |" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count('<tr class="model') == 6 * 3
    res = pd.read_csv(tmp_path / "results.csv")
    assert res.shape[0] == 6 + 1 and res.reference.sum() == 1  # synth2 has no reference run
    assert "Suite <code>synth2</code>" in html  # both configs


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (["recon_mse", "fid_gmm", "nll_bpd"], "fid_gmm"),  # autoencoders scored on GMM samples alone
        (["fid_domain_gmm", "fid_domain"], "fid_domain"),  # the model's own sampler first
        (["recon_mse", "nll_bpd"], None),  # a likelihood is no sample quality: no figure
    ],
)
def test_the_quality_against_cost_figure_takes_the_generation_use_s_metric(present, chosen):
    """The answer's generation line and the figure agree: a suite whose only generation metric is
    a `_gmm` one got the answer but "Not drawn: no generation metric"."""
    from types import SimpleNamespace

    from bench.report.figures import main_generation_metric

    long = pd.DataFrame({"metric": present, "mean": [1.0] * len(present)})
    assert main_generation_metric(SimpleNamespace(metrics=present, long=long)) == chosen
