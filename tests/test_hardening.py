"""Hostile input that is not a suite file: planted cache files, secrets in URIs, labels that
would be markup or formulas, journals that point outside their folder, models that cannot be built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cache import CacheFileError, cached_tensors, entry_path


class Planted:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": Planted(marker)}, path)
    return path


def test_the_planted_pickle_is_live(tmp_path):
    """The fixture's file does run code under an unrestricted load, so the tests below can fail."""
    marker = tmp_path / "ran"
    path = plant(tmp_path / "x.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_planted_file_at_the_converted_inception_path_never_runs(tmp_path, monkeypatch):
    from bench.metrics import features, inception

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    path = plant(inception._converted_path(), marker)
    with pytest.raises(CacheFileError, match=f"{path}: refused to load"):
        features._module("inception-v3-compat", str(path), "0" * 64, ("2048",), "cpu")
    assert not marker.exists()


def test_a_planted_domain_classifier_never_runs(tmp_path):
    from bench.metrics import features
    from bench.metrics.domain import TF_NAME
    from bench.metrics.fidelity import FeatureExtractorDomain

    marker = tmp_path / "ran"
    path = plant(tmp_path / "cache" / "domain" / "synthetic-x.pt", marker)
    with pytest.raises(CacheFileError, match=str(path)):
        features._module(TF_NAME, str(path), "0" * 64, ("penultimate",), "cpu")
    with pytest.raises(CacheFileError, match=str(path)):
        FeatureExtractorDomain(TF_NAME, ["logits"], feature_extractor_weights_path=str(path))
    assert not marker.exists()


def test_a_planted_cache_entry_is_recomputed_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    parts = {"what": "reference statistics", "n": 3}
    plant(entry_path("stats", parts), marker)
    got = cached_tensors("stats", parts, lambda: {"mu": torch.arange(3.0)})
    assert torch.equal(got["mu"], torch.arange(3.0)) and not marker.exists()
    assert torch.equal(torch.load(entry_path("stats", parts), weights_only=True)["mu"], torch.arange(3.0))


# --------------------------------------------------------------------------- damaged cache entries
# A cache that bench filled itself for tiny synthetic data, copied for each test, one file damaged
# where bench keeps it; the real code path then reads it back, and must give the clean value again.

CPU = torch.device("cpu")
# one generation metric of each kind of reference result
KIND_METRICS = ("fid_domain", "fd_inf_domain", "kid_domain", "precision_domain", "density_domain",
                "is_domain", "modes_covered")  # fmt: skip


def _small_eval():
    from bench.config import EvalConfig

    return EvalConfig(
        metrics=["fid_domain"], n_samples=60, n_real=60, batch_size=64, kid_subset_size=20, kid_subsets=5,
        fd_inf_min_n=20, fd_inf_points=3, isc_splits=2,
    )  # fmt: skip


def _new_entry(folder: Path, before: set[Path]) -> Path:
    """The one cache entry (not its key note) that appeared in ``folder`` since ``before``."""
    (path,) = {p for p in folder.glob("*") if not p.name.endswith(".key.json")} - before
    return path


def _entries(folder: Path) -> set[Path]:
    return set(folder.glob("*")) if folder.is_dir() else set()


@pytest.fixture(scope="module")
def clean_cache(tmp_path_factory):
    """What bench cached (the domain classifier, the reference set's features, FID statistics and
    k-NN radii, one reference result of each kind), where each entry is, and what it gave."""
    from types import SimpleNamespace

    from bench.data import load_dataset
    from bench.metrics.generative import GenerationEval, generation_metric

    root = tmp_path_factory.mktemp("clean_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE_DIR", str(root))
    try:
        data = load_dataset("synthetic", train_size=256, test_size=64)
        cfg = _small_eval()
        gen = GenerationEval(data, cfg, 0, CPU)
        paths, values = {}, {}
        for kind in ("features", "statistics", "radii"):
            before = _entries(root / kind)
            values[kind] = _real(kind, gen)
            paths[kind] = _new_entry(root / kind, before).relative_to(root)
        for name in KIND_METRICS:
            before = _entries(root / "reference")
            values[name] = gen.reference_result(generation_metric(name))
            paths[name] = _new_entry(root / "reference", before).relative_to(root)
    finally:
        mp.undo()
    return SimpleNamespace(root=root, data=data, cfg=cfg, paths=paths, values=values)


@pytest.fixture
def damaged(clean_cache, tmp_path, monkeypatch):
    """A copy of the clean cache that this test may damage; returns the path of an entry in it."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(clean_cache.root, cache)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    return lambda what: cache / clean_cache.paths[what]


def _recomputed(caplog, path: Path) -> None:
    """The warning names the entry: it held the wrong thing, or could not be read at all."""
    wrong = f"cache entry {path} does not hold what its key describes; recomputing"
    assert wrong in caplog.text or f"cache entry {path} unreadable" in caplog.text


def _reference_json(clean_cache, name: str) -> dict:
    import json

    return json.loads((clean_cache.root / clean_cache.paths[name]).read_text())


HOSTILE_ROWS = {
    "negative fid, no provenance": '{"provenance": {}, "values": {"fid": -7.5}}',
    "NaN fid, no provenance": '{"values": {"fid": NaN}}',
    "NaN fid": '{"provenance": {"statistics": "float64"}, "values": {"fid": NaN}}',
    "infinite fid": '{"provenance": {"statistics": "float64"}, "values": {"fid": Infinity}}',
    "a list": "[1, 2]",
    "nested too deeply": "[" * 100_000 + "]" * 100_000,
    "a string value": '{"provenance": {"statistics": "float64"}, "values": {"fid": "7"}}',
}


@pytest.mark.parametrize("content", HOSTILE_ROWS.values(), ids=HOSTILE_ROWS.keys())
def test_a_damaged_reference_result_is_recomputed(content, clean_cache, damaged, caplog):
    from bench.metrics.generative import GenerationEval, generation_metric

    path = damaged("fid_domain")
    path.write_text(content)
    got = GenerationEval(clean_cache.data, clean_cache.cfg, 0, CPU).reference_result(
        generation_metric("fid_domain")
    )
    clean = clean_cache.values["fid_domain"]
    assert got.value == clean.value and got.provenance == clean.provenance
    _recomputed(caplog, path)
    assert path.read_text() == (clean_cache.root / clean_cache.paths["fid_domain"]).read_text()


@pytest.mark.parametrize("name", KIND_METRICS)
def test_a_reference_result_with_a_nan_value_is_recomputed_for_every_kind(name, clean_cache, damaged, caplog):
    """Its file otherwise as bench wrote it: the right keys and provenance, one value NaN. The
    recomputed value passes the check and replaces the file (the keys the check expects are those
    every scorer writes)."""
    import json

    from bench.metrics.generative import GenerationEval, generation_metric

    gm = generation_metric(name)
    row = _reference_json(clean_cache, name)
    row["values"][gm.base.name] = float("nan")
    path = damaged(name)
    path.write_text(json.dumps(row))
    got = GenerationEval(clean_cache.data, clean_cache.cfg, 0, CPU).reference_result(gm)
    clean = clean_cache.values[name]
    assert got.value == clean.value and got.extra == clean.extra
    _recomputed(caplog, path)
    assert json.loads(path.read_text()) == _reference_json(clean_cache, name)


def _real(kind: str, gen) -> dict[str, torch.Tensor]:
    """The reference set's cached tensors of one kind, read (or computed) through bench's own
    function, as the dict of tensors the cache entry holds."""
    from bench.metrics.features import EXTRACTORS, real_features, real_radii, real_statistics

    prep, ref = gen.prepared(EXTRACTORS.get("domain")), gen.reference
    if kind == "features":
        return real_features(ref, prep, 64, CPU)
    if kind == "statistics":
        return real_statistics(ref, prep, "penultimate", 64, CPU)
    return {"radii": real_radii(ref, prep, "penultimate", gen.cfg.prc_neighborhood, 64, CPU)}


# damage to a tensor entry that keeps it a readable weights-only file: (entry kind, damage)
TENSOR_DAMAGE = {
    "statistics: NaN mu": ("statistics", lambda s: {**s, "mu": torch.full_like(s["mu"], float("nan"))}),
    "statistics: infinite sigma": (
        "statistics",
        lambda s: {**s, "sigma": s["sigma"].clone().fill_diagonal_(float("inf"))},
    ),
    "statistics: 5-d for 128-d features": (
        "statistics",
        lambda s: {"mu": s["mu"][:5], "sigma": s["sigma"][:5, :5]},
    ),
    "statistics: float32": ("statistics", lambda s: {k: v.float() for k, v in s.items()}),
    "statistics: negative variances": ("statistics", lambda s: {**s, "sigma": -s["sigma"]}),
    "statistics: an extra entry": ("statistics", lambda s: {**s, "n": torch.tensor(7)}),
    "features: NaN": ("features", lambda f: {k: torch.full_like(v, float("nan")) for k, v in f.items()}),
    "features: 5-d": ("features", lambda f: {k: v[:, :5] for k, v in f.items()}),
    "features: float64": ("features", lambda f: {k: v.double() for k, v in f.items()}),
    "features: an extra layer": ("features", lambda f: {**f, "2048": f["penultimate"]}),
    "radii: NaN": ("radii", lambda r: {"radii": torch.full_like(r["radii"], float("nan"))}),
    "radii: negative": ("radii", lambda r: {"radii": -r["radii"]}),
    "radii: float32": ("radii", lambda r: {"radii": r["radii"].float()}),
}


@pytest.mark.parametrize(("kind", "damage"), TENSOR_DAMAGE.values(), ids=TENSOR_DAMAGE.keys())
def test_a_damaged_tensor_entry_is_recomputed(kind, damage, clean_cache, damaged, caplog):
    """FID statistics, reference features and k-NN radii: a damaged entry gives the clean values
    again, with a warning naming it, and is replaced by them."""
    from bench.cache import save_tensors
    from bench.metrics.generative import GenerationEval

    def same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
        return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)

    clean = clean_cache.values[kind]
    path = damaged(kind)
    save_tensors(damage(clean), path)
    assert same(_real(kind, GenerationEval(clean_cache.data, clean_cache.cfg, 0, CPU)), clean)
    _recomputed(caplog, path)
    assert same(torch.load(path, weights_only=True), clean)


def test_cached_json_recomputes_an_entry_that_fails_its_check_and_never_stores_one(tmp_path, monkeypatch):
    import json

    from bench.cache import cached_json

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    parts = {"what": "a result", "n": 3}
    path = entry_path("results", parts, ".json")
    path.parent.mkdir(parents=True)
    path.write_text('{"x": NaN}')
    finite = lambda v: isinstance(v["x"], float) and v["x"] == v["x"]  # noqa: E731
    assert cached_json("results", parts, lambda: {"x": 2.0}, finite) == {"x": 2.0}
    assert json.loads(path.read_text()) == {"x": 2.0}
    path.unlink()
    # a computed value that fails the check is returned, never stored for later runs to reject
    got = cached_json("results", parts, lambda: {"x": float("nan")}, finite)
    assert got["x"] != got["x"] and not path.exists()


SMALL_TRAINING = {"epochs": 1, "min_steps": 5}  # the classifier's own key: cheap to train


def _nan_weight(blob: dict) -> None:
    blob["state_dict"]["head.weight"][0, 0] = float("nan")


def _negative_variance(blob: dict) -> None:
    blob["state_dict"]["features.1.running_var"][0] = -1.0


def _nan_accuracy(blob: dict) -> None:
    blob["test_accuracy"] = float("nan")


@pytest.mark.parametrize("damage", [_nan_weight, _negative_variance, _nan_accuracy])
def test_a_domain_classifier_with_nan_weights_is_trained_again(damage, tmp_path, monkeypatch, caplog):
    from bench.cache import save_tensors
    from bench.data import load_dataset
    from bench.metrics import domain

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    data = load_dataset("synthetic", train_size=256, test_size=64)
    train = domain.TrainConfig(**SMALL_TRAINING)
    first = domain.classifier(data, CPU, train)
    clean = torch.load(first.path, weights_only=True)
    blob = torch.load(first.path, weights_only=True)
    damage(blob)
    save_tensors(blob, first.path)
    again = domain.classifier(data, CPU, train)
    assert f"domain classifier {first.path} unusable" in caplog.text and "training it again" in caplog.text
    assert again.path == first.path and again.test_accuracy == first.test_accuracy
    state = torch.load(again.path, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in clean["state_dict"].items())


# --------------------------------------------------------------------------- reports

HTML_LABEL = "<img src=x onerror=alert(1)>"
FORMULA_LABEL = '=HYPERLINK("http://x","y")'
MATH_LABEL = r"$\frac{1}{$ broken"  # mathtext would raise on this
SECRET_URI = "http://alice:s3cret-token@tracking.example:5000"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> str:
    """Runs whose labels would be HTML, a spreadsheet formula and broken mathtext, one failed run
    whose reason has markup, written straight into a sqlite store in bench's data contract."""
    import yaml
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("hostile")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("hostile")
    parent = client.create_run(
        exp, run_name="hostile", tags={"bench.kind": "suite", "bench.suite": "hostile"}
    )
    labels = [HTML_LABEL, FORMULA_LABEL, MATH_LABEL]
    suite = {"name": "hostile", "models": [{"name": "ae-mlp", "label": lab} for lab in labels]}
    client.log_text(parent.info.run_id, yaml.safe_dump(suite) + "# ```\n", "suite.yaml")
    client.set_terminated(parent.info.run_id, "FINISHED")
    for label in labels:
        for seed in (0, 1):
            tags = {
                "bench.kind": "run",
                "label": label,
                "model": "ae-mlp",
                "family": "ae",
                "seed": str(seed),
                "mlflow.parentRunId": parent.info.run_id,
            }
            rid = client.create_run(exp, run_name=f"x/seed{seed}", tags=tags).info.run_id
            for step in (1, 2):
                client.log_metric(rid, "recon_mse", 0.01 * (step + seed + len(label) % 3), step=step)
                client.log_metric(rid, "train/loss", 1.0 / step + seed, step=step)
            client.set_terminated(rid, "FINISHED")
    tags = {
        "bench.kind": "run",
        "label": HTML_LABEL,
        "model": "ae-mlp",
        "family": "ae",
        "seed": "2",
        "mlflow.parentRunId": parent.info.run_id,
        "failure_reason": "@SUM(1) <script>x</script> | [a](b)",
    }
    rid = client.create_run(exp, run_name="x/seed2", tags=tags).info.run_id
    client.set_terminated(rid, "FAILED")
    return uri


@pytest.fixture(scope="module")
def hostile_report(hostile_store, tmp_path_factory):
    import bench.report.write as write
    from bench.store.tracking import Tracker

    out = tmp_path_factory.mktemp("hostile_report")
    real = write.load_store

    def with_secret_uri(tracker, suites):  # as if the store were a server behind credentials
        data = real(tracker, suites)
        data.uri = SECRET_URI
        return data

    mp = pytest.MonkeyPatch()
    mp.setattr(write, "load_store", with_secret_uri)
    try:
        write.write_report(Tracker(hostile_store), ["hostile"], out, log_to_store=False)
    finally:
        mp.undo()
    return out


def test_labels_are_escaped_in_report_md(hostile_report):
    import re

    md = (hostile_report / "report.md").read_text()
    prose = re.sub(r"(?ms)^(`{3,})yaml$.*?^\1$", "", md)  # fenced code is text, not markup
    prose = re.sub(r"`[^`\n]*`", "", prose)  # and so are code spans
    assert "<img" not in prose and "<script>" not in prose
    assert "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "\\[a\\](b)" in md and "\\| \\[a" in md  # no link, no extra table column
    failed = next(line for line in md.splitlines() if "FAILED" in line)
    assert failed.count(" | ") == 4  # five cells: the reason's pipe is escaped
    # the resolved config's fence is longer than the backticks inside it
    assert "````yaml" in md


def test_csv_cells_cannot_be_formulas(hostile_report):
    import csv

    for name in ("results.csv", "runs.csv"):
        with open(hostile_report / name, newline="") as f:
            rows = list(csv.reader(f))
        cells = [c for row in rows for c in row]
        assert not any(c.startswith(("=", "+", "@")) for c in cells), name
        assert not any(c.startswith("-") and not _is_number(c) for c in cells), name
        assert "'" + FORMULA_LABEL in cells, name
    with open(hostile_report / "runs.csv", newline="") as f:
        assert "'@SUM(1) <script>x</script> | [a](b)" in [c for row in csv.reader(f) for c in row]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_a_dollar_label_is_drawn_as_text_and_the_report_is_whole(hostile_report):
    for name in ("report.md", "results.csv", "runs.csv", "report.html", "curves.png", "losses.png"):
        assert (hostile_report / name).stat().st_size > 0, name
    assert "Not drawn: curves.png" not in (hostile_report / "report.md").read_text()


def test_a_failing_figure_never_stops_the_tables(hostile_store, tmp_path, monkeypatch):
    from bench.report import figures
    from bench.report.write import write_report
    from bench.store.tracking import Tracker

    def broken(rep, path):
        raise ValueError("drawing failed")

    monkeypatch.setattr(figures, "metric_curves", broken)
    write_report(Tracker(hostile_store), ["hostile"], tmp_path, log_to_store=False)
    md = (tmp_path / "report.md").read_text()
    assert "Not drawn: curves.png: it failed (ValueError: drawing failed)" in md
    assert (tmp_path / "results.csv").stat().st_size > 0 and (tmp_path / "losses.png").exists()


def test_credentials_never_reach_a_report(hostile_report):
    for name in ("report.md", "report.html"):
        text = (hostile_report / name).read_text()
        assert "s3cret" not in text and "alice" not in text, name
        assert "http://***@tracking.example:5000" in text, name


def test_redact_uri():
    from bench.store.tracking import redact_uri

    assert redact_uri(SECRET_URI) == "http://***@tracking.example:5000"
    assert redact_uri("postgresql://u:p@ss@db/x") == "postgresql://***@db/x"
    assert redact_uri(f"cannot reach {SECRET_URI}/api: refused") == (
        "cannot reach http://***@tracking.example:5000/api: refused"
    )
    for plain in ("sqlite:////tmp/a@b/mlflow.db", "http://host:5000", "./mlruns", "mail me at a@b.c"):
        assert redact_uri(plain) == plain


def test_an_unreachable_store_error_hides_its_credentials(capsys):
    import socket

    from bench.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["report", "x", "--tracking-uri", f"http://alice:s3cret@127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2 and "s3cret" not in err and f"http://***@127.0.0.1:{port}" in err, err


# --------------------------------------------------------------------------- relog


def _journal(folder: Path, secret: Path, entry: dict) -> Path:
    from bench.store.journal import Journal

    j = Journal(folder, {"uri": "x", "run_id": None, "experiment": "relogged", "run_name": "r/seed0"})
    j.add("metrics", values={"loss": 1.0}, step=1, timestamp=1)
    j.add("artifact", file=j.keep_text("fine", "notes.txt"), dir=None)
    j.add("artifact", **entry)
    j.add("finish", status="FINISHED")
    return folder


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "artifact-dir"])
def test_relog_uploads_only_files_inside_the_journal_folder(how, tmp_path, capsys):
    from bench.cli import main

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    folder = tmp_path / "run" / "offline"
    folder.mkdir(parents=True)
    entry = {
        "absolute": {"file": str(secret), "dir": None},
        "dotdot": {"file": "files/../../../secret.txt", "dir": None},
        "symlink": {"file": "files/link.txt", "dir": None},
        "artifact-dir": {"file": "files/notes.txt", "dir": "../../outside"},
    }[how]
    _journal(folder, secret, entry)
    if how == "symlink":
        (folder / "files" / "link.txt").symlink_to(secret)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["relog", str(folder), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and f"{folder}/journal.jsonl: entry 3: artifact" in err, err
    assert (folder / "journal.jsonl").is_file()  # not replayed: kept for a look
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_relog_itself_refuses_before_sending(tmp_path, store):
    from bench.store.relog import JournalError, relog
    from bench.store.tracking import Tracker

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    folder = _journal(tmp_path / "offline", secret, {"file": str(secret), "dir": None})
    tracker = Tracker(store)
    with pytest.raises(JournalError, match="entry 3: artifact file"):
        relog(folder, tracker)
    assert not (tmp_path / "mlflow.db").exists()  # nothing was sent: the store was never opened


@pytest.mark.parametrize("kind", ["params", "tags"])
def test_a_journal_header_with_a_name_the_store_refuses_is_refused_before_the_store(kind, tmp_path, capsys):
    """The header's params and tags go through MLflow's name rules as every entry's do: a name it
    refuses is exit 2 naming the line, before any run is created (a later bench run keeps the journal
    and goes on)."""
    from bench.cli import main
    from bench.store.journal import Journal

    folder = tmp_path / "offline"
    head = {"uri": "x", "run_id": None, "experiment": "relogged", "run_name": "r/seed0"}
    j = Journal(folder, {**head, kind: {"bad name!?": "1"}})
    j.add("finish", status="FINISHED")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["relog", str(folder), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and f"{folder}/journal.jsonl: line 1: the header's {kind} name 'bad name!?'" in err, err
    assert (folder / "journal.jsonl").is_file() and not (tmp_path / "mlflow.db").exists()


def test_relog_of_a_journal_without_credentials_asks_for_them(tmp_path, capsys):
    from bench.cli import main
    from bench.store.journal import Journal

    folder = tmp_path / "offline"
    Journal(folder, {"uri": "http://***@tracking.example:5000", "run_id": "abc", "experiment": "e"})
    rc = main(["relog", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and "give it with --tracking-uri" in err and "http://***@tracking.example:5000" in err


# --------------------------------------------------------------------------- one bad model


def _cli(args, capsys):
    from bench.cli import main

    rc = main(args)
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("where", ["flag", "suite"])
def test_a_device_this_machine_lacks_is_exit_2_before_any_run(
    where, tmp_path, write_suite, capsys, monkeypatch
):
    from conftest import tiny_suite

    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite(device="cpu" if where == "flag" else "cuda:99"))
    store = tmp_path / "store.db"
    args = ["run", str(path), "--tracking-uri", f"sqlite:///{store}"]
    rc, lines = _cli(args + (["--device", "cuda:99"] if where == "flag" else []), capsys)
    source = "--device" if where == "flag" else f"{path}: device"
    expected = (
        "'cuda:99': this machine has no CUDA device (use cpu or auto)"
        if not torch.cuda.is_available()
        else f"'cuda:99': this machine has {torch.cuda.device_count()} CUDA device(s)"
    )
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"{source}: {expected}"), lines
    assert not store.exists()


def test_a_bad_device_flag_is_refused(tmp_path, write_suite, capsys):
    from conftest import tiny_suite

    path = write_suite(tiny_suite())
    rc, lines = _cli(
        ["run", str(path), "--device", "gpu", "--tracking-uri", f"sqlite:///{tmp_path / 's.db'}"], capsys
    )
    assert rc == 2 and lines == ["--device: device must be auto, cpu, mps, cuda or cuda:N (got 'gpu')"]


def test_a_model_that_cannot_be_built_is_one_failed_run(tmp_path, write_suite, capsys, monkeypatch):
    """What validation lets through fails its own run; the suite goes on and writes its report."""
    from conftest import tiny_suite
    from mlflow import MlflowClient

    import bench.run.execute as execute

    real = execute.build_model

    def build(name, params, image_shape, *plugin_paths):
        if name == "vae-mlp":
            raise MemoryError("cannot allocate 9 TB")
        return real(name, params, image_shape, *plugin_paths)

    monkeypatch.setattr(execute, "build_model", build)
    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite(models=[{"name": "ae-mlp"}, {"name": "vae-mlp"}, {"name": "gan-mlp"}]))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    rc, lines = _cli(["run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "rep")], capsys)
    assert rc == 1
    assert "run vae-mlp/seed0 FAILED: cannot build the model: MemoryError: cannot allocate 9 TB" in lines
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    status = {r.data.tags.get("label", r.data.tags.get("bench.kind")): r.info.status for r in runs}
    # the suite run ends (FAILED: one of its runs failed), never left RUNNING
    assert status == {"ae-mlp": "FINISHED", "vae-mlp": "FAILED", "gan-mlp": "FINISHED", "suite": "FAILED"}
    assert "cannot build the model" in (tmp_path / "rep" / "report.md").read_text()


# --------------------------------------------------------------------------- strict numbers


def test_an_exact_exponent_is_the_integer_it_writes(write_suite):
    from bench.suite import load_suite

    path = write_suite(
        "name: t\ndataset: {name: synthetic, train_size: 2e3}\nbudget: {steps: 1e3, seconds: null}\n"
        "models: [{name: vae-mlp, beta: 1e0}]\n"
    )
    suite = load_suite(path)
    assert suite.budget.steps == 1000 and suite.dataset.train_size == 2000
    assert type(suite.budget.steps) is int


def test_an_empty_tracking_uri_is_refused(write_suite, tmp_path, capsys, monkeypatch):
    from conftest import tiny_suite

    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite())
    for verb in (["run", str(path)], ["report", "tiny"]):
        rc, lines = _cli([*verb, "--tracking-uri", ""], capsys)
        assert rc == 2 and lines == [
            "--tracking-uri: empty; give a tracking URI, or leave the flag out for the default store"
        ]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_read_only_sqlite_store_is_exit_2_at_start_up(
    hostile_store, tmp_path, write_suite, capsys, monkeypatch
):
    import shutil

    from conftest import read_only_file, tiny_suite

    db = tmp_path / "store.db"
    uri = f"sqlite:///{db}"
    shutil.copyfile(hostile_store.removeprefix("sqlite:///"), db)  # an existing, valid store
    with read_only_file(db):
        monkeypatch.chdir(tmp_path)
        path = write_suite(tiny_suite())
        before = sorted(tmp_path.rglob("*"))
        rc, lines = _cli(["run", str(path), "--tracking-uri", uri], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"--tracking-uri: the tracking store {uri} is read-only here ("), lines
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no lock file, no run folder


# --------------------------------------------------------------------------- reasons


def test_a_suite_run_left_open_by_a_lost_store_is_closed_with_that_reason(
    hostile_store, tmp_path, monkeypatch
):
    import platform
    import shutil
    import subprocess

    from mlflow import MlflowClient

    from bench.run.driver import close_stale_suites, note_lost_suite
    from bench.store.tracking import Tracker

    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    db = tmp_path / "store.db"
    shutil.copyfile(hostile_store.removeprefix("sqlite:///"), db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hostile").experiment_id
    ended = subprocess.Popen(["true"])
    ended.wait()  # a process of this host that no longer exists
    dead = {
        "bench.kind": "suite",
        "bench.suite": "hostile",
        "bench.host": platform.node(),
        "bench.pid": str(ended.pid),
    }
    lost, killed = (client.create_run(exp, run_name=n, tags=dead).info.run_id for n in ("lost", "killed"))
    tracker = Tracker(uri)
    note_lost_suite(tracker, lost, "the tracking store http://***@h did not answer for 2 s")
    close_stale_suites(tracker, "hostile")
    a, b = client.get_run(lost), client.get_run(killed)
    assert a.info.status == "FAILED" and a.data.tags["failure_reason"] == (
        "the tracking store stopped answering while it ran: "
        "the tracking store http://***@h did not answer for 2 s"
    )
    assert b.info.status == "KILLED" and b.data.tags["failure_reason"].endswith("(killed)")
    assert not list((tmp_path / "home" / "lost-suites").iterdir())  # the note is used once


def test_a_folder_store_gets_the_same_whole_answer_from_run(tmp_path, write_suite, capsys, monkeypatch):
    from conftest import tiny_suite

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite())
    rc, lines = _cli(["run", str(path), "--tracking-uri", "runs-here"], capsys)
    assert rc == 2 and lines == [
        "--tracking-uri: 'runs-here' is a folder store, which MLflow keeps in maintenance mode and refuses: "
        "use sqlite:///runs-here/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true to use the folder)"
    ]
    assert not (tmp_path / "runs-here").exists()


def test_credentials_reach_no_file_a_run_writes(hostile_store, tmp_path, write_suite, capsys, monkeypatch):
    """A whole `bench run` against a store named with a user and token (served here by a sqlite
    file): no file it writes (run folders, checkpoints, report, store) and no line it prints holds them."""
    import shutil

    from conftest import tiny_suite
    from mlflow import MlflowClient

    from bench.cli import main
    from bench.store.tracking import Tracker

    db = tmp_path / "store.db"
    shutil.copyfile(hostile_store.removeprefix("sqlite:///"), db)
    monkeypatch.setattr(Tracker, "_connect", lambda self: MlflowClient(tracking_uri=f"sqlite:///{db}"))
    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite(models=[{"name": "ae-mlp"}], checkpoint={"every": 2}))
    uri = "http://alice:s3cret@127.0.0.1:9/"
    rc = main(["run", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "rep")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "s3cret" not in out.out + out.err and "http://***@127.0.0.1:9/" in out.out
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != db]
    assert any(p.name == "run.json" for p in written) and (tmp_path / "rep" / "report.md").exists()
    for p in written + [db]:
        assert b"s3cret" not in p.read_bytes(), p


@pytest.mark.parametrize("variable", ["BENCH_HOME", "BENCH_CACHE_DIR"])
def test_a_run_folder_or_cache_that_is_a_file_is_exit_2_before_the_store(
    variable, tmp_path, write_suite, capsys, monkeypatch
):
    """Checkpoints and journals go under $BENCH_HOME, cached features under $BENCH_CACHE_DIR: set to a
    file, a run would fail at its first checkpoint, a metric at its cache, after the store held a
    RUNNING suite run. Refused first, naming the variable; nothing written."""
    from conftest import tiny_suite

    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite())
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv(variable, str(afile))
    before = sorted(tmp_path.rglob("*"))
    rc, lines = _cli(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], capsys)
    assert rc == 2 and lines == [f"{variable}={afile}: {afile} exists and is not a folder"], lines
    assert sorted(tmp_path.rglob("*")) == before


def test_a_report_folder_that_cannot_be_written_into_is_exit_2_before_any_run(
    tmp_path, write_suite, capsys, monkeypatch
):
    """An --out whose nearest folder this process cannot write (permissions, a read-only mount)
    was found only after training, when the report was written: now before anything is."""
    from conftest import read_only_file, tiny_suite

    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite())
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only_file(locked):
        before = sorted(tmp_path.rglob("*"))
        store = f"sqlite:///{tmp_path / 'm.db'}"
        rc, lines = _cli(["run", str(path), "--tracking-uri", store, "--out", str(locked / "rep")], capsys)
        assert sorted(tmp_path.rglob("*")) == before
    assert rc == 2 and lines == [f"--out: {locked} cannot be written into here"], lines


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_a_sqlite_store_in_memory_is_exit_2_before_any_run(uri, tmp_path, write_suite, capsys, monkeypatch):
    """An in-memory sqlite store ends with the process: the runs trained into it, reported as
    FINISHED with exit 0, were gone (and the next `bench run` trained them again)."""
    from conftest import tiny_suite

    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite())
    before = sorted(tmp_path.rglob("*"))
    rc, lines = _cli(["run", str(path), "--tracking-uri", uri], capsys)
    assert rc == 2 and len(lines) == 1 and "is a sqlite store in memory" in lines[0], lines
    assert sorted(tmp_path.rglob("*")) == before
    rc, lines = _cli(["validate", str(path), "--set", f"tracking.uri='{uri}'"], capsys)
    assert rc == 2 and any("tracking.uri" in x and "in memory" in x for x in lines), lines


def test_a_folder_under_one_this_process_cannot_enter_is_a_problem_not_a_traceback(monkeypatch):
    """Path.exists raises PermissionError (Python 3.11) for a path under a folder the process
    cannot enter (`BENCH_HOME=/root/x` for another user): said as the folder's problem."""
    from bench.files import folder_problem

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    assert folder_problem(Path("/root/x/y")) == "/root/x/y cannot be looked at here (Permission denied)"
