"""Progress of ``bench run`` (bars on a terminal, log lines otherwise) and the suite hooks."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from conftest import tiny_suite

from bench.run.driver import run_suite
from bench.run.grids import StepImages
from bench.run.hooks import HookList, SuiteHooks
from bench.run.progress import ProgressReporter, default_hooks
from bench.store.tracking import Tracker
from bench.suite import validate_suite


def _suite(**over):
    base = {
        "models": [{"name": "ae-mlp"}, {"name": "vae-mlp"}],
        "eval": {"every": 3, "metrics": ["recon_mse"], "batch_size": 64},
    }
    return validate_suite(tiny_suite(**{**base, **over}))


class Recorder(SuiteHooks):
    """Keeps the calls it gets, in order."""

    def __init__(self):
        self.calls = []

    def suite_started(self, suite, n_runs):
        self.calls.append(("suite_started", n_runs))

    def run_started(self, ctx):
        self.calls.append(("run_started", ctx.spec.run_name))

    def logged(self, step, losses):
        self.calls.append(("logged", step, sorted(losses)))

    def evaluated(self, step, results):
        self.calls.append(("evaluated", step, sorted(results)))

    def run_finished(self, outcome):
        self.calls.append(("run_finished", outcome.status))

    def suite_finished(self, outcomes):
        self.calls.append(("suite_finished", len(outcomes)))


@pytest.fixture(scope="module")
def progress_run(tmp_path_factory):
    """One real run of a two-model suite with step images, a recorder, plain progress lines and bars."""
    root = tmp_path_factory.mktemp("progress")
    recorder, bars_out = Recorder(), io.StringIO()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.INFO)
    logger = logging.getLogger("bench")
    old_level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        hooks = HookList(
            [
                StepImages(),
                recorder,
                ProgressReporter(stream=io.StringIO()),
                ProgressReporter(bars_out, bars=True),
            ]
        )
        outcomes = run_suite(
            _suite(), "", Tracker(f"sqlite:///{root / 'mlflow.db'}"), torch.device("cpu"), hooks
        )
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old_level)
    return outcomes, recorder.calls, [r.getMessage() for r in records], bars_out.getvalue()


def test_hooks_see_the_life_of_each_run(progress_run):
    _, calls, _, _ = progress_run
    assert calls[0] == ("suite_started", 2) and calls[-1] == ("suite_finished", 2)
    ae = calls[1 : calls.index(("run_finished", "FINISHED")) + 1]
    assert ("logged", 2, ["loss"]) in ae and ("evaluated", 3, ["recon_mse"]) in ae
    kinds = [(c[0], c[1]) for c in ae]
    # eval.every 3 during training, then the final evaluation at the end of the 6-step budget
    assert kinds == [
        ("run_started", "ae-mlp/seed0"),
        ("logged", 2),
        ("evaluated", 3),
        ("logged", 4),
        ("logged", 6),
        ("evaluated", 6),
        ("run_finished", "FINISHED"),
    ]
    vae = calls[len(ae) + 1 : -1]
    assert vae[0] == ("run_started", "vae-mlp/seed0") and ("logged", 2, ["kl", "loss", "rec"]) in vae


def test_plain_progress_lines(progress_run):
    _, _, lines, _ = progress_run
    assert lines[0] == "suite tiny: 2 runs"
    assert "[1/2] ae-mlp/seed0: started (6 steps)" in lines
    mid = [m for m in lines if m.startswith("[1/2] ae-mlp/seed0: step 3/6 (50%)")]
    assert len(mid) == 1 and "eval: recon_mse" in mid[0] and "loss" in mid[0] and "eta" in mid[0]
    done = [m for m in lines if m.startswith("[2/2] vae-mlp/seed0: FINISHED in ")]
    assert len(done) == 1 and done[0].endswith("suite: 2 of 2 runs done, 2 finished, 0 failed")
    assert not any("step 6/6" in m for m in lines)  # the end is the FINISHED line, not a progress line


def test_progress_bars(progress_run):
    _, _, _, out = progress_run
    assert "suite tiny" in out and "[1/2] ae-mlp/seed0" in out and "[2/2] vae-mlp/seed0" in out
    assert "6/6" in out and "kl " in out  # the run bar reaches the budget and shows the losses
    assert "[1/2] ae-mlp/seed0: FINISHED in" in out
    assert "2/2" in out and "2 finished, 0 failed" in out


def test_hooks_do_not_change_results(tmp_path, progress_run):
    """Step-indexed images draw from their own generator: the VAE's training noise is unchanged."""
    outcomes, *_ = progress_run
    plain = run_suite(
        _suite(models=[{"name": "vae-mlp"}]),
        "",
        Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        torch.device("cpu"),
        HookList([]),
    )
    assert plain[0].metrics == outcomes[1].metrics


def test_default_hooks():
    assert [type(h).__name__ for h in default_hooks().hooks] == ["StepImages"]
    assert [type(h).__name__ for h in default_hooks(progress=True).hooks] == [
        "StepImages",
        "ProgressReporter",
    ]
