"""The report of a real, interrupted suite: the reference row (logged before the runs start) is in
report.md, results.csv and report.html; the answer section leads; metrics evaluated only at the
end are drawn as dot plots, not as curves."""

from __future__ import annotations

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
import torch
from conftest import stop_process_group, tiny_suite
from mlflow import MlflowClient

from bench.config import Suite
from bench.report import write_report
from bench.run.driver import run_suite
from bench.run.hooks import SuiteHooks
from bench.store.tracking import Tracker

METRICS = ["recon_mse", "probe_acc", "fid_domain"]


class StopAtRun(SuiteHooks):
    """Interrupt the suite as the ``n``-th run starts (as a Ctrl-C or a lost machine would)."""

    def __init__(self, n: int) -> None:
        self.n, self.started = n, 0

    def run_started(self, ctx) -> None:
        self.started += 1
        if self.started == self.n:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupted")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    suite = Suite.model_validate(
        tiny_suite(
            name="cut",
            dataset={"name": "synthetic", "train_size": 512, "test_size": 256},
            seeds=[0, 1],
            models=[{"name": "ae-mlp"}, {"name": "gan-mlp"}, {"name": "vae-mlp"}],
            eval={"metrics": METRICS, "n_samples": 100, "n_real": 100, "batch_size": 64},
        )
    )
    tracker = Tracker(uri)
    with pytest.raises(KeyboardInterrupt):  # the suite stops as its fifth run (gan-mlp/seed1) starts
        run_suite(suite, "name: cut\n", tracker, torch.device("cpu"), StopAtRun(5))
    out = tmp / "report"
    summary, paths = write_report(tracker, ["cut"], out)
    return summary, out, uri


def test_interrupted_suite_has_the_reference_row(interrupted):
    summary, out, uri = interrupted
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cut").experiment_id
    (ref_run,) = client.search_runs([exp], "tags.`bench.kind` = 'reference'")
    ref_fid = ref_run.data.metrics["fid_domain"]
    runs = client.search_runs([exp], "tags.`bench.kind` = 'run'")
    assert sorted(r.info.run_name for r in runs if r.info.status == "FINISHED") == [
        "ae-mlp/seed0",
        "ae-mlp/seed1",
        "gan-mlp/seed0",
        "vae-mlp/seed0",
    ]
    res = pd.read_csv(out / "results.csv")
    ref = res[res.reference]
    assert list(ref.label) == ["real data (reference)"] and list(ref.family) == ["data"]
    assert ref.fid_domain_mean.iloc[0] == pytest.approx(ref_fid)
    assert math.isnan(ref.recon_mse_mean.iloc[0])  # a reconstruction metric has no real-data value
    md = (out / "report.md").read_text()
    gen = md[md.index("### Generation") :]
    line = next(x for x in gen.splitlines() if x.startswith("| real data (reference) |"))
    assert line.rstrip(" |").endswith(f"{ref_fid:.4g}".rstrip("0").rstrip("."))
    html = (out / "report.html").read_text()
    table = html[html.index('id="results-generation"') :]
    assert '<tr class="reference">' in table[: table.index("</table>")]


def test_answer_section_leads_with_one_line_per_use(interrupted):
    summary, out, _ = interrupted
    md = (out / "report.md").read_text()
    assert md.index("## Answer") < md.index("## Results")
    answer = md[md.index("## Answer") : md.index("## Results")]
    lines = [x for x in answer.splitlines() if x.startswith("- ")]
    uses = [x[2:].split(" (")[0] for x in lines]
    assert uses == ["compression", "feature learning", "generation", "cost"]
    gen = next(x for x in lines if x.startswith("- generation (fid_domain ↓)"))
    # the best and the runner-up, from the finished runs' means; ae-mlp has two seeds, gan-mlp one
    t = summary.long[summary.long.metric == "fid_domain"].set_index("label")["mean"].dropna().sort_values()
    best, runner = t.index[0], t.index[1]
    assert f": {best} (" in gen and f"runner-up {runner} (" in gen
    assert f"{best} vs {runner} not testable" in gen  # one side has a single seed
    assert "real data " in gen
    comp = next(x for x in lines if x.startswith("- compression (recon_mse ↓)"))
    v = summary.values
    ae, vae = (v.value[(v.label == lab) & (v.metric == "recon_mse")] for lab in ("ae-mlp", "vae-mlp"))
    assert len(ae) == 2 and len(vae) == 1  # vae-mlp/seed1 never ran
    assert "(at compression_ratio " not in comp  # not in the suite's metrics
    feat = next(x for x in lines if x.startswith("- feature learning (probe_acc ↑)"))
    assert "best GAN" not in feat  # a probe does not apply to a GAN
    html = (out / "report.html").read_text()
    assert html.index('id="answer"') < html.index('id="results"')


def test_end_only_metrics_are_dot_plots(interrupted):
    _, out, _ = interrupted
    md = (out / "report.md").read_text()
    assert (out / "dots.png").stat().st_size > 0
    assert not (out / "curves.png").exists()
    assert "Metrics at the end of the budget" in md
    assert "Not drawn: metrics against training progress: every metric was evaluated at one point" in md


# --------------------------------------------------------------------------- in a browser


def _browser():
    from browser import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")
    return Chromium(timeout=120)


def test_report_html_shows_the_answer_and_the_reference_row(interrupted):
    _, out, _ = interrupted
    with _browser() as b:
        b.open((out / "report.html").as_uri())
        answers = b.evaluate("Array.from(document.querySelectorAll('#answer li')).map(e => e.textContent)")
        assert [a.split(" (")[0] for a in answers] == [
            "compression",
            "feature learning",
            "generation",
            "cost",
        ]
        # the answer is above the tables, on the first screen
        assert b.evaluate("document.getElementById('answer').getBoundingClientRect().top") < 1000
        ref = b.evaluate(
            "Array.from(document.querySelectorAll('#results-generation tfoot tr.reference td'))"
            ".map(e => e.textContent.trim())"
        )
        assert ref[:3] == ["real data (reference)", "data", "—"] and ref[3] not in ("", "n/a")
        models = b.evaluate(
            "Array.from(document.querySelectorAll("
            "'#results-generation tbody tr.model td:first-child strong'))"
            ".map(e => e.textContent)"
        )
        assert models == ["ae-mlp", "gan-mlp", "vae-mlp"]
        assert b.errors == []
        if os.environ.get("BENCH_SCREENSHOT"):  # for looking at the page by eye
            b.screenshot(Path(os.environ["BENCH_SCREENSHOT"]))


def test_bench_ui_opens_on_the_training_runs(interrupted):
    """``bench ui`` prints each experiment's runs page; in the browser it lists the suite run, and
    expanding it shows the child runs by name, with their dataset."""
    _, _, uri = interrupted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: the MLflow server and its workers stop with it
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].split("cut: ", 1)[1].strip()
        assert f"127.0.0.1:{port}/#/experiments?workflowType=machine_learning " in lines[0]  # the front page
        assert url.endswith("/runs?workflowType=machine_learning")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        with _browser() as b:
            rows = "Array.from(document.querySelectorAll('[role=row]')).map(e => e.innerText)"
            parent = None
            for _ in range(3):  # a page opened while the server still warms up may show its error page
                b.open(url)
                parent = _wait(b, "(" + rows + ").find(t => t.includes('cut ('))", 90)
                if parent:
                    break
            if not parent and os.environ.get("BENCH_UI_SCREENSHOT"):
                b.screenshot(Path(os.environ["BENCH_UI_SCREENSHOT"]))
            assert parent, f"the suite run is not in the runs table of {url}: {b.evaluate(rows)}"
            b.evaluate(
                "Array.from(document.querySelectorAll('[role=row]')).find(e => e.innerText.includes('cut ('))"
                ".querySelectorAll('button').forEach(x => x.click())"
            )
            text = _wait(b, f"(({rows}).join(' ').includes('ae-mlp/seed0')) && ({rows}).join(' ')")
            for name in ("ae-mlp/seed0", "ae-mlp/seed1", "gan-mlp/seed0", "vae-mlp/seed0", "gan-mlp/seed1"):
                assert name in text, name
            assert "synthetic (" in text  # the Dataset column: name and digest
            if os.environ.get("BENCH_UI_SCREENSHOT"):
                b.screenshot(Path(os.environ["BENCH_UI_SCREENSHOT"]))
    finally:
        stop_process_group(proc)


def _wait(b, expression: str, seconds: float = 90):
    """Evaluate until the page gives a truthy value (the UI renders after its API calls answer)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = b.evaluate(expression)
        if value:
            return value
        time.sleep(0.5)
    return None
