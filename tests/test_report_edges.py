"""What a report says where the runs are not one clean set: runs of different configurations in
one row, a value logged as NaN, a requested metric no run has, seeds that agree exactly, and
values ranked within likelihood families."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from bench.report import write_report
from bench.report.summary import fmt_mean_ci, summarise
from bench.report.uses import answers
from bench.store.tracking import Tracker

# per label: family, then per seed (the run's budget.steps param, recon_mse, psnr)
RUNS = {
    "ae-x": ("ae", [(200, 0.010, 20.0), (100, 0.020, 18.0)]),
    "vae-x": ("vae", [(200, 0.012, 19.0), (200, 0.013, math.nan)]),
}


def _write(client: MlflowClient) -> None:
    exp = client.create_experiment("edges")
    parent = client.create_run(exp, run_name="edges", tags={"bench.kind": "suite", "bench.suite": "edges"})
    suite = {
        "name": "edges",
        "models": [{"name": "ae-mlp", "label": "ae-x"}, {"name": "vae-mlp", "label": "vae-x"}],
        "eval": {"metrics": ["recon_mse", "psnr", "compression_ratio"]},
    }
    client.log_text(parent.info.run_id, yaml.safe_dump(suite, sort_keys=False), "suite.yaml")
    client.set_terminated(parent.info.run_id, "FINISHED")
    for label, (family, seeds) in RUNS.items():
        for seed, (steps, mse, psnr) in enumerate(seeds):
            tags = {"bench.kind": "run", "label": label, "model": label, "family": family, "seed": str(seed)}
            run = client.create_run(exp, run_name=f"{label}/seed{seed}", tags=tags)
            rid = run.info.run_id
            params = {"seed": seed, "budget.steps": steps, "budget.batch_size": 64}
            params["dataset.root"] = f"/data{seed}"  # where the data was read: not a difference
            for k, v in params.items():
                client.log_param(rid, k, v)
            client.log_metric(rid, "recon_mse", mse, step=steps)
            client.log_metric(rid, "psnr", psnr, step=steps)
            client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    _write(MlflowClient(uri))
    summary, _ = write_report(Tracker(uri), ["edges"], root / "out")
    out = root / "out"
    return summary, (out / "report.md").read_text(), (out / "report.html").read_text(), out


def test_runs_of_different_configurations_in_one_row_are_named(report):
    summary, md, html, out = report
    warnings = [line for line in md.splitlines() if line.startswith("**Warning:**")]
    # ae-x seed 0 trained 200 steps, seed 1 100: its mean pools both; vae-x is one configuration, and
    # the data folder and the seed are not a difference
    assert warnings == [
        "**Warning:** ae-x pools runs of different configurations: `budget.steps` `200` (seed 0), "
        "`100` (seed 1). The statistics mix them: the report takes the latest run of each model and seed "
        "in the suite's experiment, also of seeds and settings the suite no longer names."
    ]
    assert md.index("**Warning:**") < md.index("### Compression")
    assert '<p class="warn"><strong>Warning:</strong> ae-x pools runs' in html
    assert "<code>budget.steps</code>" in html
    assert list(summary.pooled.label) == ["ae-x"]
    runs = pd.read_csv(out / "runs.csv")
    assert not {"config_params", "nan_metrics", "metric_failures"} & set(runs.columns)


def test_a_value_logged_as_nan_is_listed_with_the_runs_that_did_not_finish(report):
    summary, md, html, _ = report
    # vae-x psnr: 19 and NaN -> the mean of the one finite seed, flagged n=1, and the NaN listed
    st = summary.stat("edges", "vae-x", "psnr")
    assert st["n"] == 1 and st["mean"] == 19.0
    row = next(line for line in md.splitlines() if line.startswith("| vae-x |"))
    assert "19 (n=1)" in row
    gap = summary.failed[summary.failed.status == "metric NaN"]
    assert list(zip(gap.label, gap.seed)) == [("vae-x", 1)]
    assert gap.failure_reason.iloc[0].startswith("psnr: the run logged NaN")
    assert "| edges | vae-x | 1 | metric NaN | psnr: the run logged NaN" in md
    assert "metric NaN" in html


def test_a_requested_metric_without_any_value_is_named(report):
    _, md, html, _ = report
    note = next(line for line in md.splitlines() if "without a value in any run" in line)
    assert "`compression_ratio`" in note and "`psnr`" not in note and "`recon_mse`" not in note
    assert "without a value in any run" in html and "<code>compression_ratio</code>" in html


def test_seeds_that_agree_exactly_show_a_zero_interval():
    assert fmt_mean_ci(0.0, 0.0) == "0 ± 0"  # three seeds of recall 0, say: not one seed
    assert fmt_mean_ci(0.25, 0.0) == "0.25 ± 0"
    assert fmt_mean_ci(0.25, math.nan) == "0.25"  # one seed: no interval


def test_three_equal_seeds_summarise_to_a_zero_interval():
    # np.std of three 0.1 is 1.7e-17, not 0: the cell read "0.1 ± 4.2e-17"
    rows = [
        {
            "suite": "s", "label": "jpeg", "model": "jpeg", "family": "codec", "capabilities": None,
            "likelihood": "", "seed": seed, "status": "FINISHED", "failure_reason": "", "metric_failures": {},
            "run_id": f"r{seed}", "start_time": seed, "recon_mse": 0.1,
        }
        for seed in range(3)
    ]  # fmt: skip
    st = summarise(pd.DataFrame(rows)).stat("s", "jpeg", "recon_mse")
    assert (st["mean"], st["std"], st["ci95"], st["n"]) == (0.1, 0.0, 0.0, 3)
    assert fmt_mean_ci(st["mean"], st["ci95"]) == "0.1 ± 0"


def _likelihood_runs() -> pd.DataFrame:
    rows = []
    per_label = [
        ("vae-b", "bernoulli", [7.10, 7.00, 7.05]),
        ("vae-g", "gaussian", [5.00, 5.10, 5.20]),
        ("vae-b2", "bernoulli", [7.30, 7.35, 7.40]),
    ]
    for label, likelihood, values in per_label:
        for seed, v in enumerate(values):
            rows.append(
                {
                    "suite": "s", "label": label, "model": "vae-mlp", "family": "vae",
                    "capabilities": frozenset({"likelihood", "posterior"}), "likelihood": likelihood,
                    "seed": seed, "status": "FINISHED", "failure_reason": "", "metric_failures": {},
                    "run_id": f"{label}{seed}", "start_time": seed, "nll_bpd": v,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_likelihood_families_are_answered_and_tested_apart():
    s = summarise(_likelihood_runs())
    lines = [a.text() for a in answers(s)]
    # never "vae-g best" over the Bernoulli models: one line per likelihood family
    assert lines == [
        "generation (nll_bpd ↓, bernoulli likelihood): vae-b (VAE) 7.05 best; runner-up vae-b2 (VAE) 7.35; "
        "vae-b vs vae-b2 significant (Welch p = 0.0018)",
        "generation (nll_bpd ↓, gaussian likelihood): vae-g (VAE) 5.1 best",
    ]
    t = s.table.set_index("label")
    # the Gaussian model is not tested against the Bernoulli baseline; the other Bernoulli one is
    assert math.isnan(t.loc["vae-g", "nll_bpd_p"]) and not t.loc["vae-g", "nll_bpd_significant"]
    assert t.loc["vae-b2", "nll_bpd_significant"]
    assert t.loc["vae-b", "nll_bpd_best"] and not t.loc["vae-g", "nll_bpd_best"]


def test_an_unfinished_attempt_does_not_hide_the_finished_run_of_its_configuration():
    """A killed ``--restart`` of a finished run leaves the finished run standing in the report; a
    newer run of another configuration supersedes it, finished or not; a rerun after a failure too."""
    from bench.report.summary import _latest_per_seed

    def run(seed, status, config_hash, t):
        return {"suite": "s", "label": "m", "seed": seed, "status": status, "config_hash": config_hash,
                "run_id": f"{seed}-{status}-{config_hash}-{t}", "start_time": t}  # fmt: skip

    df = pd.DataFrame(
        [
            run(0, "FINISHED", "h", 1), run(0, "KILLED", "h", 2),
            run(1, "FINISHED", "h", 1), run(1, "FAILED", "g", 2),
            run(2, "FAILED", "h", 1), run(2, "FINISHED", "h", 2),
            run(3, "FINISHED", "h", 1), run(3, "RUNNING", "h", 2), run(3, "FINISHED", "h", 3),
        ]
    )  # fmt: skip
    kept = set(_latest_per_seed(df).run_id)
    assert kept == {"0-FINISHED-h-1", "1-FAILED-g-2", "2-FINISHED-h-2", "3-FINISHED-h-3"}


def test_a_report_write_that_fails_midway_leaves_the_previous_files_whole(report, tmp_path, file_size_limit):
    """Each report file is replaced whole: a write stopped partway (a full disk, a kill) leaves the
    previous file as it was, never a torn one. Here a file size limit stops report.html, the largest
    file, halfway."""
    import shutil

    _, _, _, made = report
    tracker = Tracker(f"sqlite:///{made.parent / 'mlflow.db'}")
    out = Path(shutil.copytree(made, tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    html_size = len(before["report.html"])
    others = max(len(b) for name, b in before.items() if name.endswith((".md", ".csv")))
    assert others < html_size // 2
    with file_size_limit(html_size // 2), pytest.raises(OSError):
        write_report(tracker, ["edges"], out, log_to_store=False)
    assert (out / "report.html").read_bytes() == before["report.html"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_store_note_stays_within_mlflow_s_tag_limit():
    """Many rows pooling runs of different configurations, one warning each: the MLflow description
    is cut at a line, saying so, before MLflow's 8,000 characters would cut it silently."""
    from bench.report.write import NOTE_LIMIT, store_note

    rows = [
        {"suite": "s", "label": f"model-{i:03d}", "model": "ae-mlp", "family": "ae", "capabilities": None,
         "likelihood": "", "seed": seed, "status": "FINISHED", "failure_reason": "", "metric_failures": {},
         "config_params": {"budget.steps": str(100 * (seed + 1) + i)}, "run_id": f"r{i}-{seed}",
         "start_time": seed, "recon_mse": 0.01 * (i + 1) + seed}
        for i in range(300)
        for seed in range(2)
    ]  # fmt: skip
    short = store_note(summarise(pd.DataFrame(rows[:4])), "now", "report")
    assert "cut here" not in short and "**Warning:** model-000 pools runs" in short
    assert "- compression (recon_mse ↓)" in short
    note = store_note(summarise(pd.DataFrame(rows)), "now", "report")
    assert len(note) <= NOTE_LIMIT and note.endswith("(cut here: the whole answer is in report.md)\n")
    assert "- compression (recon_mse ↓)" in note and "**Warning:** model-000 pools runs" in note
