"""The comparison report from a real store written by the real ``bench run`` (one variant diverges):
files, statistics, failures, the baseline, artifacts in the store, the HTML page in headless
Chromium, and ``bench ui`` on the same store."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import stop_process_group
from mlflow import MlflowClient
from PIL import Image
from scipy import stats as sps

from bench.report.published import protocol_check, verdict
from bench.report.summary import fmt_num

LABELS = ["ae-mlp", "vae-mlp", "gan-mlp", "vae-overflow"]
FIGURES = ["curves.png", "losses.png", "rate_distortion.png", "samples.png", "reconstructions.png"]


@pytest.fixture(scope="module")
def report_dir(report_store) -> Path:
    """``bench report`` in another process: everything comes from the store."""
    uri, root = report_store
    out = root / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "report",
            "reportsuite",
            "--tracking-uri",
            uri,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout
    return out


def test_report_files(report_dir):
    for name in ["report.md", "results.csv", "runs.csv", "report.html", *FIGURES]:
        assert (report_dir / name).stat().st_size > 0, name
    for name in FIGURES:
        with Image.open(report_dir / name) as im:
            assert im.width > 200 and im.height > 200
    md = (report_dir / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in md
    # no generation metric in this suite: the figure is skipped with its reason, not drawn empty
    assert not (report_dir / "quality_vs_cost.png").exists()
    assert "Not drawn: quality against cost: no generation metric" in md


def test_the_cost_section_shows_the_evaluation_time_of_every_metric(report_dir, report_store):
    md = (report_dir / "report.md").read_text()
    section = md.split("### Evaluation time", 1)[1].split("\n#", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    # the AE's latent fit, then one column per metric the runs logged a time for, in the suite's
    # order; the GAN has n/a
    assert [c.strip() for c in header.split("|")[4:-1]] == [
        "latent_fit s", "recon_mse s", "psnr s", "ssim s", "bpp s", "compression_ratio s"
    ]  # fmt: skip
    cost = md.split("### Cost", 1)[1].split("\n#", 1)[0]
    assert "| eval s |" in next(line for line in cost.splitlines() if line.startswith("| model"))
    # the cells are the runs' own eval_seconds.<metric>, averaged over seeds
    runs = pd.read_csv(report_dir / "runs.csv")
    ae = runs[(runs.label == "ae-mlp") & (runs.status == "FINISHED")]
    assert set(runs.capabilities[runs.label == "vae-mlp"]) == {"likelihood,posterior"}  # names, not a repr
    mean = ae["eval_seconds.ssim"].mean()
    row = next(line for line in section.splitlines() if line.startswith("| ae-mlp"))
    assert fmt_num(mean) in row.split("|")[7]
    assert "that metric's seconds within the evaluation" in md
    assert "latent_fit s = the post-training fit of a model's latent sampler" in md
    fit = ae["eval_seconds.latent_fit"]
    assert (fit > 0).all() and fmt_num(fit.mean()) in row.split("|")[4]
    gan = next(line for line in section.splitlines() if line.startswith("| gan-mlp"))
    assert gan.split("|")[4].strip() == "—"  # a GAN fits no latent sampler


def test_one_row_per_model_in_suite_order(report_dir):
    table = pd.read_csv(report_dir / "results.csv")
    assert list(table.label) == LABELS
    assert list(table.family) == ["ae", "vae", "gan", "vae"]


def test_failed_runs_are_shown_as_failed(report_dir):
    table = pd.read_csv(report_dir / "results.csv").set_index("label")
    assert table.loc["vae-overflow", "seeds"] == 0 and table.loc["vae-overflow", "failed"] == 2
    assert math.isnan(table.loc["vae-overflow", "recon_mse_mean"])
    runs = pd.read_csv(report_dir / "runs.csv")
    failed = runs[runs.label == "vae-overflow"]
    assert list(failed.status) == ["FAILED", "FAILED"]
    assert failed.failure_reason.str.contains("non-finite loss").all()

    md = (report_dir / "report.md").read_text()
    assert "| vae-overflow | vae | 0 (+2 failed) | — |" in md
    assert "## Runs and metrics that did not finish" in md
    assert "| reportsuite | vae-overflow | 0 | FAILED | non-finite loss" in md
    html = (report_dir / "report.html").read_text()
    assert 'id="failed"' in html and "non-finite loss" in html and "2 failed" in html


def test_confidence_intervals_and_welch_from_the_runs(report_dir):
    runs = pd.read_csv(report_dir / "runs.csv")
    table = pd.read_csv(report_dir / "results.csv").set_index("label")
    t1 = math.tan(math.pi * (0.975 - 0.5))  # t_{0.975, 1}: Student t with 1 df is the Cauchy distribution
    for label in ["ae-mlp", "vae-mlp"]:
        a, b = runs[runs.label == label].sort_values("seed").recon_mse
        # two seeds: sd / sqrt(2) = |a - b| / 2
        assert table.loc[label, "recon_mse_ci95"] == pytest.approx(t1 * abs(a - b) / 2, rel=1e-9)
        assert table.loc[label, "recon_mse_mean"] == pytest.approx((a + b) / 2)
    # Welch's test of ae-mlp against the baseline vae-mlp, by hand
    x = runs[runs.label == "ae-mlp"].recon_mse.to_numpy()
    y = runs[runs.label == "vae-mlp"].recon_mse.to_numpy()
    vx, vy = x.var(ddof=1) / 2, y.var(ddof=1) / 2
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 + vy**2)
    p = 2 * sps.t.sf(abs(t), df)
    assert table.loc["ae-mlp", "recon_mse_p"] == pytest.approx(p, rel=1e-6)
    assert bool(table.loc["ae-mlp", "recon_mse_significant"]) == (p < 0.05)
    assert math.isnan(table.loc["vae-mlp", "recon_mse_p"])  # the baseline is not tested against itself
    assert math.isnan(table.loc["gan-mlp", "recon_mse_p"])  # n/a for GANs
    # best per column, by direction: lower recon_mse, higher psnr
    best_mse = table[["recon_mse_mean"]].dropna().idxmin().iloc[0]
    assert table.loc[best_mse, "recon_mse_best"] and table.recon_mse_best.sum() == 1
    best_psnr = table[["psnr_mean"]].dropna().idxmax().iloc[0]
    assert table.loc[best_psnr, "psnr_best"]
    # measured rates: the ratio is 8-bit raw size over the bitstreams' size, so 8 / bpp for grey images
    coded = runs[runs.label.isin(["ae-mlp", "vae-mlp"]) & (runs.status == "FINISHED")]
    assert len(coded) == 4
    assert coded.compression_ratio.to_numpy() == pytest.approx(8 / coded.bpp.to_numpy())
    assert math.isnan(table.loc["gan-mlp", "bpp_mean"])


def test_published_values_are_stored_with_the_runs_and_placed_by_the_report(report_dir, report_store):
    md = (report_dir / "report.md").read_text()
    section = md.split("## Measured beside published values", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| reportsuite")]
    assert len(rows) == 3
    ae, ae_other, vae = rows
    assert "| ae-mlp | `recon_mse` |" in ae and "| 2 | split test | 1,000 ± 1 | far above |" in ae
    assert "| vae-mlp | `psnr` |" in vae and "| 2 | — |" in vae and "inside the published band" in vae
    # measured on other images than the publication: no verdict, though the band would hold the mean
    assert "| ae-mlp | `psnr` |" in ae_other and "| split test |" in ae_other
    assert "not comparable: split test here, train published" in ae_other and "band" not in ae_other
    # the page people open has the same section, the incomparable verdict flagged
    html = (report_dir / "report.html").read_text()
    section = html.split('<h2 id="published">', 1)[1].split("<h2", 1)[0]
    assert section.count("<tr>") == 4 and '<a href="#published">' in html  # a header row and three
    assert '<span class="badge bad">not comparable: split test here, train published</span>' in section
    assert "inside the published band" in section and "split test" in section
    runs = pd.read_csv(report_dir / "results.csv")
    ae_mse = runs[runs.label == "ae-mlp"].recon_mse_mean.iloc[0]
    assert f"below the published band by {fmt_num(1000.0 - 1.0 - ae_mse)}" in ae
    client = MlflowClient(report_store[0])
    exp = client.get_experiment_by_name("reportsuite")
    tagged = client.search_runs([exp.experiment_id], "tags.label = 'vae-mlp'")
    assert tagged and all(
        json.loads(r.data.tags["bench.published.psnr"])
        == {"value": 0.0, "pm": 1000.0, "source": "wide band", "note": "", "protocol": {}}
        for r in tagged
    )


def test_a_published_protocol_is_checked_against_the_runs_provenance():
    measured = {"n_fake": "10000", "n_real": "2000 | 10000", "reference_split": "test"}
    shown, differs = protocol_check({"n_fake": 10000.0, "reference_split": "test"}, measured)
    assert shown == "n_fake 10000, reference_split test" and differs == ""
    # runs that differ among themselves, a field no run records, a string against a number
    _, differs = protocol_check({"n_real": 10000, "extractor": "inception", "n_fake": "10,000"}, measured)
    assert differs == (
        "n_real 2000 | 10000 here, 10000 published; the runs record no extractor; "
        "n_fake 10000 here, 10,000 published"
    )
    assert protocol_check({"binarize": True}, {"binarize": "true"}) == ("binarize true", "")
    assert protocol_check({}, measured) == ("", "")


def test_a_protocol_is_checked_against_the_model_s_own_runs():
    """Another model's runs, measured another way, do not make this model's value incomparable."""
    import pandas as pd

    from bench.report.published import _measured_provenance
    from bench.report.summary import StoreData, _merge_provenance

    def row(label, n):
        return {"suite": "s", "source": label, "metric": "fid", "provenance": json.dumps({"n_fake": n})}

    merged = _merge_provenance([row("a", 10000), row("a", 10000), row("b", 2000), row("b", 10000)])
    data = StoreData("uri", ["s"], pd.DataFrame(), pd.DataFrame(), label_provenance=merged)
    assert _measured_provenance(data, "s", "a", "fid") == {"n_fake": "10000"}
    assert _measured_provenance(data, "s", "b", "fid") == {"n_fake": "2000 | 10000"}
    assert _measured_provenance(data, "s", "c", "fid") == {}


def test_merged_provenance_names_the_models_a_field_holds_for():
    """The provenance of all runs of a metric: a field that differs between models, or that only
    some models have, names the models of each value; one all models share stays plain."""
    from bench.report.summary import _merge_provenance

    def row(label, fields):
        prov = json.dumps(fields)
        return {"suite": "s", "source": "runs", "label": label, "metric": "fid", "provenance": prov}

    merged = _merge_provenance(
        [
            row("ae", {"n_fake": 10000, "sampler": "prior", "fit_on": "60000 training codes"}),
            row("ae", {"n_fake": 10000, "sampler": "prior", "fit_on": "60000 training codes"}),
            row("gan", {"n_fake": 10000, "sampler": "prior", "chunk": 500}),
            row("vae", {"n_fake": 10000, "sampler": "gmm", "chunk": 500}),
        ]
    )
    (fields,) = [json.loads(p) for p in merged.provenance]
    assert fields == {
        "n_fake": "10000",
        "sampler": "prior (ae, gan) | gmm (vae)",
        "fit_on": "60000 training codes (ae)",
        "chunk": "500 (gan, vae)",
    }


def test_verdict_places_the_mean_against_the_band():
    assert verdict(26.0, 1.0, 26.5, 1.6) == "inside the published band"
    assert verdict(30.1, 0.5, 26.5, 1.6) == "above the published band by 2"
    assert verdict(24.0, 2.0, 26.5, 1.6) == "below the published band by 0.9 (the measured 95% CI reaches it)"
    assert verdict(float("nan"), 0.0, 26.5, 1.6) == "not measured"


def test_baseline_comes_from_the_stored_suite(report_dir):
    table = pd.read_csv(report_dir / "results.csv")
    assert list(table.baseline) == [False, True, False, False]
    md = (report_dir / "report.md").read_text()
    assert "| vae-mlp (baseline) | vae | 2 |" in md
    assert "baseline `vae-mlp`" in md
    assert "report:\n  baseline: vae-mlp" in md  # the resolved suite config is in the report


def test_report_is_logged_to_the_latest_parent_run(report_dir, report_store):
    client = MlflowClient(report_store[0])
    exp = client.get_experiment_by_name("reportsuite")
    parents = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'suite'")
    assert len(parents) == 1
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    for name in ["report.md", "results.csv", "runs.csv", "report.html", *FIGURES]:
        assert f"report/{name}" in logged


def test_step_indexed_images(report_store):
    client = MlflowClient(report_store[0])
    exp = client.get_experiment_by_name("reportsuite")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")}

    def steps(run, key: str) -> list[int]:
        files = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "images")]
        # images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (and a compressed .webp of each)
        return sorted(
            int(f.split("+")[2]) for f in files if f.startswith(f"{key}+step+") and f.endswith(".png")
        )

    for name in ["ae-mlp/seed0", "vae-mlp/seed1"]:
        assert steps(runs[name], "samples") == [3, 6]  # every eval.every steps and at the end
        assert steps(runs[name], "reconstructions") == [3, 6]
    assert steps(runs["gan-mlp/seed0"], "samples") == [3, 6]
    assert steps(runs["gan-mlp/seed0"], "reconstructions") == []  # no encoder
    # the last step-indexed grid is the run's samples.png: same latent draws at every evaluation
    run = runs["ae-mlp/seed0"]
    last = next(
        a.path
        for a in client.list_artifacts(run.info.run_id, "images")
        if a.path.endswith(".png") and "samples+step+6+" in a.path
    )
    d = Path(client.download_artifacts(run.info.run_id, last))
    final = Path(client.download_artifacts(run.info.run_id, "samples.png"))
    with Image.open(d) as a, Image.open(final) as b:
        assert a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


# --------------------------------------------------------------------------- the HTML page, in a browser


def _browser():
    from browser import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")
    return Chromium()


def test_html_report_in_headless_chromium(report_dir):
    with _browser() as b:
        b.open((report_dir / "report.html").as_uri())
        images = b.evaluate(
            "Array.from(document.images)"
            ".map(i => ({src: i.src.slice(0, 22), ok: i.complete, w: i.naturalWidth}))"
        )
        # every figure but the two grid panels, then each model's grids (3 sample, 2 reconstruction)
        figures = [
            p for p in report_dir.glob("*.png") if p.name not in ("samples.png", "reconstructions.png")
        ]
        assert len(figures) >= 3 and len(images) == len(figures) + 3 + 2
        assert all(i["ok"] and i["w"] > 0 for i in images), images
        assert all(i["src"].startswith("data:image/png;base64") for i in images)
        assert b.evaluate("document.querySelectorAll('script[src], link[href], [src^=http]').length") == 0
        labels = (
            "Array.from(document.querySelectorAll("
            "'#results-compression tbody tr.model td:first-child strong'))"
            ".map(e => e.textContent)"
        )
        assert b.evaluate(labels) == LABELS  # one row per model
        assert b.evaluate("document.querySelectorAll('#results-compression tbody tr').length") == len(LABELS)
        assert b.evaluate("document.querySelectorAll('#failed tbody tr, table.failed tbody tr').length") == 2

        # the table sorts: recon_mse ascending, models without a value last; again for descending
        table = pd.read_csv(report_dir / "results.csv").set_index("label")
        order = table.recon_mse_mean.dropna().sort_values()
        col = b.evaluate(
            "Array.from(document.querySelectorAll('#results-compression thead th'))"
            ".findIndex(th => th.textContent.startsWith('recon_mse'))"
        )
        assert col > 0
        click = f"document.querySelectorAll('#results-compression thead th')[{col}].click()"
        b.evaluate(click)
        assert b.evaluate(labels)[:2] == list(order.index)
        assert set(b.evaluate(labels)[2:]) == {"gan-mlp", "vae-overflow"}
        b.evaluate(click)
        assert b.evaluate(labels)[:2] == list(order.index[::-1])
        assert b.errors == []
        if os.environ.get("BENCH_SCREENSHOT"):  # for looking at the page by eye
            b.screenshot(Path(os.environ["BENCH_SCREENSHOT"]))


# --------------------------------------------------------------------------- bench ui


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bench_ui_answers_and_lists_the_suite(report_store):
    uri = report_store[0]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the MLflow server and its workers stop with it
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
        body = json.dumps({"max_results": 100}).encode()
        names, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    names = [e["name"] for e in json.load(r).get("experiments", [])]
                break
            except OSError:
                time.sleep(0.5)
        assert names is not None, f"bench ui did not answer on port {port}: {proc.poll()=}"
        assert "reportsuite" in names
    finally:
        stop_process_group(proc)
