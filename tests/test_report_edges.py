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


# --------------------------------------------------------------------------- damaged values in the store

# the stored suite config of each suite below: a valid one with one field damaged (as an edit, a
# crash mid-write or another tool could leave it), then the fields of it the report warns about
GOOD_MODELS = "models:\n  - {name: ae-mlp, label: ae-x}\n  - {name: vae-mlp, label: vae-x}\n"
GOOD_EVAL = "eval: {metrics: [recon_mse, psnr]}\n"


def _published(recon_mse: str) -> str:
    """A models block whose ae-x publishes ``recon_mse`` as given and a sound ``psnr``."""
    return (
        "models:\n  - name: ae-mlp\n    label: ae-x\n    reference:\n"
        f"      recon_mse: {recon_mse}\n"
        "      psnr: {value: 20.0, pm: 1.0, source: the paper}\n"
        "  - {name: vae-mlp, label: vae-x}\n"
    )


VALUE = "models.0.reference.recon_mse.value"
PUB = VALUE.removesuffix("value")
GOOD = GOOD_MODELS + GOOD_EVAL
DAMAGED_CONFIGS = {
    "report-list": (GOOD_MODELS + GOOD_EVAL + "report: [1]\n", ["report"]),
    "baseline-list": (GOOD_MODELS + GOOD_EVAL + "report: {baseline: [vae-x]}\n", ["report.baseline"]),
    "eval-text": (GOOD_MODELS + "eval: x\n", ["eval"]),
    "metrics-number": (GOOD_MODELS + "eval: {metrics: 5}\n", ["eval.metrics"]),
    "models-text": ("models: x\n" + GOOD_EVAL, ["models"]),
    "model-entries": (
        "models:\n  - 1\n  - {name: vae-mlp, label: [v]}\n  - {name: ae-mlp, label: ae-x}\n" + GOOD_EVAL,
        ["models.0", "models.1.label"],
    ),
    "date-out-of-range": (GOOD_MODELS + GOOD_EVAL + "note: 2020-13-45\n", ["the file"]),
    "value-text": (_published("{value: abc, source: p}") + GOOD_EVAL, [VALUE]),
    "value-nan": (_published("{value: .nan, source: p}") + GOOD_EVAL, [VALUE]),
    "value-true": (_published("{value: true, source: p}") + GOOD_EVAL, [VALUE]),
    "value-huge": (_published(f"{{value: {10**400}, source: p}}") + GOOD_EVAL, [VALUE]),
    "pm-list": (_published("{value: 0.01, pm: [1], source: p}") + GOOD_EVAL, [PUB + "pm"]),
    "pm-negative": (_published("{value: 0.01, pm: -1, source: p}") + GOOD_EVAL, [PUB + "pm"]),
    "published-text": (_published("0.01") + GOOD_EVAL, ["models.0.reference.recon_mse"]),
    # a protocol is compared as text where it is no number: a YAML date, too
    "protocol-date": (_published("{value: 0.01, source: p, protocol: {n_fake: 2020-01-01}}") + GOOD_EVAL, []),
    "protocol-list": (_published("{value: 0.01, source: p, protocol: [1]}") + GOOD_EVAL, [PUB + "protocol"]),
}


def _model_runs(client: MlflowClient, exp: str, runs: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    """Finished model runs: (label, seed tag, metrics) each; their run ids."""
    ids = []
    for label, seed, metrics in runs:
        family = label.split("-")[0]
        tags = {"bench.kind": "run", "label": label, "model": label, "family": family, "seed": seed}
        run = client.create_run(exp, run_name=f"{label}/seed{seed}", tags=tags)
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v, step=100)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return ids


GOOD_RUNS = [
    ("ae-x", "0", {"recon_mse": 0.010, "psnr": 20.0}),
    ("ae-x", "1", {"recon_mse": 0.012, "psnr": 19.0}),
    ("vae-x", "0", {"recon_mse": 0.020, "psnr": 17.0}),
]


def _suite(client: MlflowClient, name: str, config: str | None, env: str | None = None, runs=GOOD_RUNS):
    """A suite's experiment: its parent run (``config`` as its suite.yaml, ``env`` as its
    environment.json, each as given) and its model runs; (parent run id, model run ids)."""
    exp = client.create_experiment(name)
    parent = client.create_run(exp, run_name=name, tags={"bench.kind": "suite", "bench.suite": name})
    pid = parent.info.run_id
    if config is not None:
        client.log_text(pid, f"name: {name}\n" + config, "suite.yaml")
    if env is not None:
        client.log_text(pid, env, "environment.json")
    client.set_terminated(pid, "FINISHED")
    return pid, _model_runs(client, exp, runs)


HOSTILE_ENV = {
    "python": "3.11 `</code><b>bold</b>`",
    "<script>alert(1)</script>": "x",
    "docs": "[click](javascript:alert(1))",
    "gpu": None,
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """One store, a suite per damaged value: (tracker, parent run ids, model run ids per suite)."""
    import json

    root = tmp_path_factory.mktemp("damaged")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    parents, ids = {}, {}
    for name, (config, _) in DAMAGED_CONFIGS.items():
        parents[name], ids[name] = _suite(client, name, config)
    # seed tags that are no whole number, beside two sound seeds of ae-x
    bad_seeds = [("ae-x", "zero", {"recon_mse": 9.0}), ("ae-x", "1.0", {"recon_mse": 8.0})]
    parents["seeds"], ids["seeds"] = _suite(client, "seeds", GOOD, runs=GOOD_RUNS + bad_seeds)
    # a run that logged metrics named like the report's own fields
    clash = [("ae-x", "1", {"recon_mse": 0.012, "psnr": 19.0, "status": 0.0, "seed": 7.0, "label": 1.0})]
    parents["clash"], ids["clash"] = _suite(client, "clash", GOOD, runs=GOOD_RUNS[:1] + clash)
    exp = client.get_experiment_by_name("clash").experiment_id
    ref = client.create_run(exp, tags={"bench.kind": "reference"})
    for k, v in {"recon_mse": 0.001, "suite": 3.0, "run_id": 4.0}.items():
        client.log_metric(ref.info.run_id, k, v)
    client.set_terminated(ref.info.run_id, "FINISHED")
    ids["clash"].append(ref.info.run_id)
    # bench stopped right after it created the suite run: no model run yet
    parents["empty"], ids["empty"] = _suite(client, "empty", GOOD_MODELS + GOOD_EVAL, runs=[])
    env = json.dumps(HOSTILE_ENV)
    parents["env"], ids["env"] = _suite(client, "env", GOOD_MODELS + GOOD_EVAL, env=env)
    return Tracker(uri), parents, ids


def _report(damaged, suites: list[str], tmp_path: Path, caplog) -> tuple[str, str, list[str]]:
    """report.md, report.html and the warnings of a report of ``suites``; every file written."""
    import logging

    tracker, _, _ = damaged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench"):
        _, paths = write_report(tracker, suites, tmp_path / "out", log_to_store=False)
    names = {p.name for p in paths}
    assert {"report.md", "results.csv", "runs.csv", "report.html", "summary.csv"} <= names
    assert all(p.is_file() for p in paths)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    out = tmp_path / "out"
    return (out / "report.md").read_text(), (out / "report.html").read_text(), warnings


@pytest.mark.parametrize("case", list(DAMAGED_CONFIGS))
def test_a_damaged_field_of_the_stored_suite_config_is_left_out_with_one_warning(
    damaged, case, tmp_path, caplog
):
    """A field of the stored suite.yaml of the wrong type (a list for ``report``, text for ``eval``,
    a published value that is not a finite number) is read as absent: the report is whole, with one
    warning per damaged field naming the suite's run and the field (the markdown and the page read
    the config several times), and published values that are not finite numbers are not shown."""
    _, parents, _ = damaged
    md, html, warnings = _report(damaged, [case], tmp_path, caplog)
    about = [w for w in warnings if "suite.yaml" in w]
    fields = DAMAGED_CONFIGS[case][1]
    assert len(about) == len(fields), about
    for f, w in zip(fields, about):
        assert f"suite {case}: suite.yaml of run {parents[case]}:" in w
        assert (f"field {f} " if f != "the file" else "the file ") in w and "goes without it" in w
    # the tables are there, whatever the config lost
    assert any(line.startswith("| ae-x") for line in md.splitlines())
    assert "ae-x" in html
    published = [line for line in md.splitlines() if line.startswith(f"| {case} | ae-x |")]
    if case.startswith(("value-", "pm-", "published-")):
        assert [line.split(" | ")[2] for line in published] == ["`psnr`"]  # the sound value stays
        assert "20 ± 1" in published[0]
    if case.startswith("protocol-"):  # the value is sound: shown, placed where its protocol allows
        assert [line.split(" | ")[2] for line in published] == ["`recon_mse`", "`psnr`"]
        assert "not comparable: the runs record no n\\_fake" in published[0] or case != "protocol-date"


def test_a_run_whose_seed_tag_is_no_number_is_left_out_with_a_warning(damaged, tmp_path, caplog):
    """``seed=zero`` (or ``1.0``) on a finished run: the run is left out, named in a warning, and
    the other runs' numbers are as without it (two such runs are not pooled as one unknown seed)."""
    _, _, ids = damaged
    md, _, warnings = _report(damaged, ["seeds"], tmp_path, caplog)
    left_out = [w for w in warnings if "seed tag" in w]
    assert len(left_out) == 2
    assert ids["seeds"][3] in left_out[0] + left_out[1] and ids["seeds"][4] in left_out[0] + left_out[1]
    assert "'zero'" in left_out[0] + left_out[1] and "is left out of the report" in left_out[0]
    row = next(line for line in md.splitlines() if line.startswith("| ae-x"))
    assert "| 2 |" in row  # two seeds: 0 and 1
    assert "0.011 ± " in row  # the mean of 0.010 and 0.012, not of the damaged runs' 9 and 8


def test_a_metric_named_like_a_field_of_the_report_does_not_change_the_run(damaged, tmp_path, caplog):
    """A run that logged metrics named ``status``, ``seed`` and ``label`` is still the finished run
    of its tags (the metrics are left out, with a warning), not a run that never ended; a reference
    run's metric named ``suite`` does not move its row out of the suite."""
    tracker, _, ids = damaged
    md, _, warnings = _report(damaged, ["clash"], tmp_path, caplog)
    assert any(ids["clash"][1] in w and "label, seed, status" in w for w in warnings)
    assert any(ids["clash"][2] in w and "run_id, suite" in w for w in warnings)
    assert "| real data (reference) | data | — | 0.001 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| ae-x"))
    assert "| 2 |" in row and "not ended" not in row
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs.seed[runs.label == "ae-x"]) == [0, 1]
    assert set(runs.status) == {"FINISHED"}


def test_a_suite_without_model_runs_gets_a_whole_report(damaged, tmp_path, caplog):
    """bench stopped right after it created the suite run: a whole report that says there are no
    finished runs yet, alone or beside a suite that has runs."""
    md, html, _ = _report(damaged, ["empty"], tmp_path, caplog)
    assert "No finished runs yet in: empty" in md and "No finished runs yet in: empty" in html
    assert "(no runs)" in md and "</html>" in html
    md, html, _ = _report(damaged, ["report-list", "empty"], tmp_path, caplog)
    assert "No finished runs yet in: empty" in md and "No finished runs yet in: empty" in html
    assert "</html>" in html


def test_environment_values_are_escaped_in_the_markdown(damaged, tmp_path, caplog):
    """environment.json of the suite run is read back from the store: its keys and values are text
    like a label, escaped in report.md (no raw HTML, no link, no code span they could close)."""
    from bench.report.tables import md_escape

    md, html, _ = _report(damaged, ["env"], tmp_path, caplog)
    line = next(line for line in md.splitlines() if line.startswith("Environment: "))
    for raw in ("<script>", "<b>", "</code>", "[click](javascript:"):
        assert raw not in line
    assert "`" not in line.replace("\\`", "")  # every backtick escaped: no code span opens or closes
    for k, v in HOSTILE_ENV.items():
        if v is not None:
            assert f"{md_escape(k)} {md_escape(v)}" in line
    assert "gpu" not in line
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_report_folder_written_again_holds_that_report_alone(report, tmp_path):
    """Files an earlier report wrote that this one does not (a reference.csv, a figure of metrics
    these runs lack) are removed: they would be read as part of it. Other files are the user's."""
    import shutil

    from bench.report.figures import FIGURE_NAMES

    _, _, _, made = report
    tracker = Tracker(f"sqlite:///{made.parent / 'mlflow.db'}")
    out = Path(shutil.copytree(made, tmp_path / "out"))
    planted = [out / n for n in (*FIGURE_NAMES, "reference.csv")]
    for p in planted:
        if not p.exists():
            p.write_bytes(b"an earlier report's")
    (out / "notes.txt").write_text("mine")
    _, paths = write_report(tracker, ["edges"], out, log_to_store=False)
    written = {p.name for p in paths}
    assert {p.name for p in planted if p.exists()} == written & {p.name for p in planted}
    assert len(written & {p.name for p in planted}) < len(planted)  # some were stale, and are gone
    assert (out / "notes.txt").read_text() == "mine"
