"""Shared fixtures: tiny suites and a real MLflow sqlite store in a temp folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# what suites gained after stores existed: a run's hash leaves them out at their defaults, so the
# runs of an older store are still found (bench.config.HASH_NEUTRAL)
LATER_EVAL = ("gmm_kind", "gmm_weight_concentration", "gmm_max_iter", "dc_neighborhood", "fd_inf_points",
              "fd_inf_min_n", "gmm_fit_n", "code_step", "nll_k", "nll_n", "precision",
              "inception_pad_to")  # fmt: skip
LATER_PARAMS = ("ls_on", "init", "bn_momentum", "bn_eps", "g_activation", "prior_mean")


def hash_as_recorded_before(spec) -> str:
    """A run spec's config hash computed the way runs recorded it before the later options
    (numerics, paper-protocol options, code_step, plugins, image_size/channels) existed."""
    import hashlib
    import json

    import bench

    run = {k: v for k, v in spec.resolved().items() if k != "train"}
    run["eval"] = {k: v for k, v in run["eval"].items() if k not in LATER_EVAL}
    run["params"] = {k: v for k, v in run["params"].items() if k not in LATER_PARAMS}
    assert "plugin" not in run and "image_size" not in run["dataset"] and "channels" not in run["dataset"]
    blob = json.dumps({"run": run, "bench": bench.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stop_process_group(proc) -> None:
    """SIGTERM a server started in its own session (``bench ui``), SIGKILL it if it lingers."""
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tiny_suite(**over) -> dict:
    """A suite that trains in seconds on the synthetic data; keyword arguments replace top-level keys."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "train_size": 256, "test_size": 64},
        "budget": {"steps": 6, "batch_size": 32},
        "seeds": [0],
        "device": "cpu",
        "eval": {"metrics": ["recon_mse", "psnr", "ssim", "compression_ratio"], "batch_size": 64},
        "models": [{"name": "ae-mlp"}, {"name": "vae-mlp"}, {"name": "gan-mlp"}],
        "tracking": {"log_every": 2},
    }
    suite.update(over)
    return suite


@pytest.fixture
def write_suite(tmp_path: Path):
    def write(data: dict | str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh MLflow sqlite store URI inside the test's temp folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def report_suite() -> dict:
    """Three families over two seeds, plus a variant that really diverges (its loss overflows)."""
    return tiny_suite(
        name="reportsuite",
        seeds=[0, 1],
        eval={
            "every": 3,
            "metrics": ["recon_mse", "psnr", "ssim", "bpp", "compression_ratio"],
            "batch_size": 64,
            "code_step": 0.5,
        },
        models=[
            # published values (made up, far apart): the report places the runs against them
            {
                "name": "ae-mlp",
                # the protocol the runs follow, and one they do not (the test split's images)
                "reference": {
                    "recon_mse": {
                        "value": 1000.0, "pm": 1.0, "source": "far above", "protocol": {"split": "test"}
                    },
                    "psnr": {"value": 0.0, "pm": 1e3, "source": "elsewhere", "protocol": {"split": "train"}},
                },
            },
            {"name": "vae-mlp", "reference": {"psnr": {"value": 0.0, "pm": 1000.0, "source": "wide band"}}},
            {"name": "gan-mlp"},
            {"name": "vae-mlp", "label": "vae-overflow", "beta": 1.0e39, "recon_loss": "mse"},
        ],
        report={"baseline": "vae-mlp"},
    )


@pytest.fixture(scope="session")
def report_store(tmp_path_factory) -> tuple[str, Path]:
    """A real store after the real ``bench run`` of ``report_suite()`` (one label fails every seed)."""
    from bench.cli import main

    root = tmp_path_factory.mktemp("report_store")
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(report_suite(), sort_keys=False))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rc = main(["run", str(path), "--tracking-uri", uri, "--out", str(root / "run_report")])
    assert rc == 1  # the overflowing variant failed; the others finished
    return uri, root


@pytest.fixture(scope="session", autouse=True)
def bench_cache(tmp_path_factory) -> Iterator[Path]:
    """Every test session gets its own bench cache (classifiers, features, converted weights):
    tests never read or write ~/.cache/bench. Downloaded wheels are still found there."""
    path = tmp_path_factory.mktemp("bench-cache")
    old = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BENCH_CACHE_DIR", None)
    else:
        os.environ["BENCH_CACHE_DIR"] = old


@pytest.fixture
def file_size_limit():
    """``with limit(n):`` files this process writes stop at ``n`` bytes inside the block (EFBIG, as
    a full disk stops them with ENOSPC). The limit ends with the block, before pytest writes the
    test's result (into a log file that may be larger than ``n``)."""
    import resource
    import signal

    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)

    @contextlib.contextmanager
    def limit(n: int):
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a signal that kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, old_limit[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)

    yield limit


@contextlib.contextmanager
def read_only_file(path: Path):
    """``path`` read-only for this process until the block ends: chmod 444, or, as root (who
    writes through file modes), the immutable attribute; the test is skipped where that fails."""
    import subprocess

    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root where chattr +i is not available")
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o444)
        undo = ["chmod", "644", str(path)]
    try:
        yield path
    finally:
        subprocess.run(undo, check=True)
