"""Evaluation and sampling of finished runs, from what the tracking store holds.

``bench eval`` rebuilds each run's model from its logged ``model/spec.json`` and
``model/state_dict.pt``, validates the requested metrics against the run's own suite settings
(the same checks as ``bench validate``), computes them and logs them into the same run, at the
run's final step, with their provenance. ``bench sample`` draws images from a finished run.
Neither needs the training set-up.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import numerics
from bench.config import EvalConfig, Suite
from bench.data import ImageData, from_config
from bench.metrics import MetricFailure, Result, evaluate
from bench.metrics.samplers import fit_latent_sampler
from bench.models import GenerativeModel, build_model
from bench.models.plugins import installed_module, is_import_name, locate, resolve
from bench.store.tracking import METRIC_FAILED_TAG, RunLogger, Tracker
from bench.suite import SuiteError, apply_overrides, data_errors, validate_suite


class RunNotFound(LookupError):
    """The target names neither an experiment with finished runs nor a run."""


class BadRequest(ValueError):
    """A request that cannot be served here (metrics for no run, missing weights); one line per problem."""


class BadArtifact(BadRequest):
    """A run's logged artifact (``config.json``, ``model/spec.json``, ``model/state_dict.pt``) that is
    missing or damaged; the message names the run, the artifact and the field."""


# the fields of a run's config.json that rebuilding its suite reads, with their JSON types
CONFIG_FIELDS: dict[str, type] = {
    "suite": str, "label": str, "model": str, "family": str, "seed": int,
    "dataset": dict, "budget": dict, "eval": dict, "params": dict,
}  # fmt: skip
CONFIG_OPTIONAL: dict[str, type] = {"device": str, "plugin": dict}
SPEC_FIELDS: dict[str, type] = {"model": str, "params": dict, "image_shape": list}
SPEC_OPTIONAL: dict[str, type] = {"plugin_paths": list}  # where the run found its code: read by no one
MAX_SAMPLES = 10_000  # a sample grid's largest size (100 x 100 images)
TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _field_problems(obj: dict[str, Any], required: dict[str, type], optional: dict[str, type]) -> list[str]:
    """One line per field of ``obj`` that is missing or of the wrong JSON type."""
    problems = []
    for key, want in {**required, **optional}.items():
        if key not in obj:
            if key in required:
                problems.append(f"field {key!r} is missing")
            continue
        value = obj[key]
        if not isinstance(value, want) or isinstance(value, bool):
            problems.append(f"field {key!r} must be {TYPE_NAMES[want]}, not {_json_kind(value)}")
    return problems


def _brief(e: BaseException, limit: int = 300) -> str:
    """An exception as one line for an error message: its type and its text, cut at ``limit``."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _where(run_id: str, name: str, artifact: str) -> str:
    return f"run {run_id} ({name}): artifact {artifact}"


def _download(tracker: Tracker, run_id: str, name: str, artifact: str, folder: str):
    """The local copy of one artifact of a run; ``BadArtifact`` when the store does not give it."""
    try:
        return tracker.download(run_id, artifact, folder)
    except Exception as e:  # missing, or unreadable where the store keeps it
        where = _where(run_id, name, artifact)
        raise BadArtifact(f"{where}: cannot be downloaded ({_brief(e)})") from None


def _json_artifact(tracker: Tracker, run_id: str, name: str, artifact: str) -> dict[str, Any]:
    """A run's JSON artifact, which must be a JSON object; ``BadArtifact`` naming it otherwise."""
    where = _where(run_id, name, artifact)
    with tempfile.TemporaryDirectory() as d:
        path = _download(tracker, run_id, name, artifact, d)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
            raise BadArtifact(f"{where}: not a JSON file ({_brief(e)})") from None
    if not isinstance(value, dict):
        raise BadArtifact(f"{where}: must be a JSON object, not {_json_kind(value)}")
    return value


@dataclass(frozen=True)
class StoredRun:
    """A finished run as the store holds it: identity, resolved config, final step."""

    run_id: str
    name: str
    config: dict[str, Any]  # the run's config.json: the resolved RunSpec
    step: int  # the final training step (where its final metrics are logged)
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    data_digest: str | None = None  # the checksum of the data it was trained on (its MLflow input)


def _data_digest(run: Any) -> str | None:
    """The digest of the dataset a stored run records as its input (None: it records none)."""
    try:
        digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    except AttributeError:
        return None
    return digests.pop() if len(digests) == 1 else None


def _stored(tracker: Tracker, run: Any) -> StoredRun:
    """A run with its ``config.json``, whose fields are checked (``BadArtifact`` naming them)."""
    run_id, name = run.info.run_id, run.info.run_name
    config = _json_artifact(tracker, run_id, name, "config.json")
    problems = _field_problems(config, CONFIG_FIELDS, CONFIG_OPTIONAL)
    entry_keys = sorted({"name", "label", "reference"} & set(config.get("params") or {}))
    if isinstance(config.get("params"), dict) and entry_keys:  # a model's parameters never name a model
        problems.append(f"field 'params' holds {', '.join(entry_keys)}, which are no model parameters")
    paths = config.get("plugin", {}).get("paths", []) if isinstance(config.get("plugin"), dict) else []
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        problems.append("field 'plugin.paths' must be a list of strings")
    if problems:
        raise BadArtifact("\n".join(f"{_where(run_id, name, 'config.json')}: {p}" for p in problems))
    step = run.data.metrics.get("budget_steps", 0)
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step >= 0 and step == int(step)):
        raise BadArtifact(f"run {run_id} ({name}): metric budget_steps must be a whole number: {step}")
    step = int(step)
    return StoredRun(
        run.info.run_id,
        run.info.run_name,
        config,
        step,
        dict(run.data.metrics),
        dict(run.data.tags),
        _data_digest(run),
    )


def find_runs(tracker: Tracker, target: str) -> list[StoredRun]:
    """The finished model runs of experiment ``target`` (the latest per label and seed), or run ``target``."""
    if tracker.experiment_id(target, create=False) is not None:
        latest: dict[tuple[str, str], Any] = {}
        for r in sorted(tracker.runs(target), key=lambda r: r.info.start_time):
            if r.info.status == "FINISHED":
                latest[(r.data.tags.get("label", ""), r.data.tags.get("seed", ""))] = r
        if latest:
            return [_stored(tracker, r) for r in latest.values()]
        raise RunNotFound(f"experiment {target!r} has no finished runs")
    from bench.store.tracking import TrackingError

    try:
        run = tracker.run(target)
    except TrackingError:
        raise RunNotFound(f"{target!r} is neither an experiment nor a run id in {tracker.uri}") from None
    if run.data.tags.get("bench.kind") != "run" or run.info.status != "FINISHED":
        raise RunNotFound(f"run {target} is not a finished bench model run")
    return [_stored(tracker, run)]


def plugin_folders(run: StoredRun, model: str, plugins: Sequence[str]) -> list[str]:
    """The folders a stored run's ``module:Class`` model is imported from: those the user names
    (``--plugins``), never paths a stored artifact names, and only where the module is found in
    them (located without importing it). A stored run chooses no code to run. Empty for built-in
    and entry-point models."""
    if not is_import_name(model):
        return []
    where = f"run {run.run_id} ({run.name})"
    recorded = run.config.get("plugin") if isinstance(run.config.get("plugin"), dict) else {}
    file = recorded.get("file") if isinstance(recorded.get("file"), str) else None
    found = f" from {file}" if file else ""
    if not plugins:
        module = model.partition(":")[0]
        # the folder that held its module when the run trained: a suggestion, never searched
        up = module.count(".") + (2 if file and Path(file).name == "__init__.py" else 1)
        hint = str(Path(file).parents[up - 1]) if file and len(Path(file).parents) >= up else None
        if hint is None or locate(module, [hint]) is None:  # the class lies elsewhere than its module
            hint = f"FOLDER (the folder module {module.split('.')[0]} is in)"
        raise BadRequest(
            f"{where}: model {model} is a plugin{found}; bench imports a plugin only from folders "
            f"you name: add --plugins {hint}"
        )
    folders = [str(Path(f).expanduser().resolve()) for f in plugins]
    module = model.partition(":")[0]
    if locate(module, folders) is None:
        raise BadRequest(
            f"{where}: model {model}{found}: its module is not in the folders of --plugins "
            f"({', '.join(folders)})"
        )
    taken = installed_module(module.split(".")[0])
    if taken is not None:  # bench's own modules, the standard library's or a package's: never replaced
        raise BadRequest(f"{where}: model {model}: the name {module.split('.')[0]} is that of {taken}")
    # what the import would really take: a package of that name elsewhere on sys.path wins over a
    # folder without __init__.py here, and would run code no one named
    origin = locate(module, folders, then_sys_path=True)
    inside = origin is not None and any(Path(origin).resolve().is_relative_to(f) for f in folders)
    if not inside:
        raise BadRequest(
            f"{where}: model {model}: importing {module} would take {origin}, outside the folders of "
            f"--plugins ({', '.join(folders)}); bench imports nothing else"
        )
    return folders


def _check_source(run: StoredRun, model: str, paths: Sequence[str]) -> None:
    """The plugin class found now has the source the run was trained with (its recorded sha256):
    else the metrics would be another model's, logged into this run."""
    from bench.models.plugins import PluginError

    try:
        entry = resolve(model, paths)
    except PluginError as e:
        raise BadRequest(f"run {run.run_id} ({run.name}): model {model}: {e}") from None
    if entry.plugin is None:
        return
    recorded = run.config.get("plugin") if isinstance(run.config.get("plugin"), dict) else {}
    if entry.plugin.sha256 != recorded.get("sha256"):
        raise BadRequest(
            f"run {run.run_id} ({run.name}): model {model}: its source {entry.plugin.file} has sha256 "
            f"{entry.plugin.sha256[:12]}, the run was trained with {str(recorded.get('sha256'))[:12]}: "
            "the numbers would be another model's (train it again with bench run)"
        )


def suite_of_run(
    run: StoredRun, metrics: list[str] | None, overrides: list[str], where: str | None = None,
    plugins: Sequence[str] = (),
) -> Suite:
    """The run's own settings as a one-model suite, with ``metrics`` and ``--set`` overrides applied,
    fully validated (raises ``SuiteError`` naming the field, before any work)."""
    c = run.config
    raw = {
        "name": c["suite"],
        "dataset": c["dataset"],
        "budget": c["budget"],
        "seeds": [c["seed"]],
        "device": c.get("device", "auto"),
        "eval": {**c["eval"], **({"metrics": metrics} if metrics is not None else {})},
        # the model is config.json's "model", whatever its "params" hold (checked in _stored)
        "models": [{**c["params"], "name": c["model"], "label": c["label"]}],
    }
    raw["plugins"] = plugin_folders(run, c["model"], plugins)
    where = where or f"run {run.run_id} ({run.name})"
    suite = validate_suite(apply_overrides(raw, overrides, where), where)
    _check_source(run, c["model"], suite.plugin_paths)
    return suite


def load_data(suite: Suite) -> ImageData:
    d = suite.dataset
    return from_config(d)


def load_model(
    tracker: Tracker, run: StoredRun, device: torch.device, plugins: Sequence[str] = ()
) -> GenerativeModel:
    """The run's trained model, rebuilt from its spec and state_dict, in eval mode on ``device``.
    Raises ``BadArtifact`` naming the artifact when either is missing or damaged (or they do not
    fit each other); ``torch.load`` reads tensors only (``weights_only``): the file runs no code."""
    spec_file, state_file = "model/spec.json", "model/state_dict.pt"
    spec = _json_artifact(tracker, run.run_id, run.name, spec_file)
    where = _where(run.run_id, run.name, spec_file)
    problems = _field_problems(spec, SPEC_FIELDS, SPEC_OPTIONAL)
    shape = spec.get("image_shape")
    if isinstance(shape, list) and (len(shape) != 3 or not all(_is_size(x) for x in shape)):
        problems.append(f"field 'image_shape' must be 3 positive integers (channels, height, width): {shape}")
    said = run.config["model"]
    if isinstance(spec.get("model"), str) and spec["model"] != said:
        problems.append(f"field 'model' is {spec['model']!r}; the run's config.json says {said!r}")
    if problems:
        raise BadArtifact("\n".join(f"{where}: {p}" for p in problems))
    # the plugin paths it records are where the run found its code; what is imported now is the user's
    paths = plugin_folders(run, spec["model"], plugins)
    if paths:
        _check_source(run, spec["model"], paths)
    try:
        model = build_model(spec["model"], spec["params"], tuple(shape), paths)
    except Exception as e:  # an unknown model, parameters it refuses
        why = _brief(e)
        raise BadArtifact(f"{where}: model {spec['model']!r} cannot be built from it ({why})") from None
    where = _where(run.run_id, run.name, state_file)
    with tempfile.TemporaryDirectory() as d:
        path = _download(tracker, run.run_id, run.name, state_file, d)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or holding more than tensors
            raise BadArtifact(f"{where}: cannot be read ({_brief(e)})") from None
    if not isinstance(state, dict):
        raise BadArtifact(f"{where}: not a state_dict (a mapping of tensors) but {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except Exception as e:  # missing or unexpected keys, other shapes
        raise BadArtifact(f"{where}: does not fit the model of {spec_file} ({_brief(e)})") from None
    return model.to(device).eval()


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def evaluate_run(
    tracker: Tracker,
    run: StoredRun,
    suite: Suite,
    data: ImageData,
    device: torch.device,
    failed: dict[str, MetricFailure],
) -> dict[str, Result]:
    """Compute ``suite.eval.metrics`` for a stored run and log them into it at its final step.

    A metric computed clears the run's ``metric_failed.<metric>`` tag; one that raises is tagged
    so (and added to ``failed``) while the others are still computed and logged."""
    model = load_model(tracker, run, device, suite.plugins)
    cfg: EvalConfig = suite.eval
    with numerics.evaluation(model, cfg.precision, device):  # the codes evaluate shares
        fit_latent_sampler(model, data, cfg.batch_size)
    errors: dict[str, MetricFailure] = {}
    results = evaluate(model, data, cfg, run.config["seed"], device, failed=errors)
    stamped = {
        k: Result(r.value, {**r.provenance, "evaluated_by": "bench eval"}, r.extra)
        for k, r in results.items()
    }
    logger = RunLogger(tracker, run.run_id)
    logger.results(run.step, stamped)
    stale = [METRIC_FAILED_TAG + k for k in stamped if METRIC_FAILED_TAG + k in run.tags]
    for key in stale:  # computed now: no longer missing
        tracker.call(tracker.client.delete_tag, run.run_id, key)
    if errors:
        logger.tags({METRIC_FAILED_TAG + k: f.reason for k, f in errors.items()})
        failed.update(errors)
    return stamped


@dataclass(frozen=True)
class Planned:
    """One run to evaluate, with its validated settings and its data."""

    run: StoredRun
    suite: Suite
    data: ImageData


def plan_eval(
    tracker: Tracker,
    target: str,
    metrics: list[str] | None,
    overrides: list[str],
    plugins: Sequence[str] = (),
) -> list[Planned]:
    """Find the runs, validate the request for each (a metric that does not apply to a run's family
    is n/a there, as in ``bench run``), load their data, and check the machine has what the
    metrics need. Raises before anything is computed or written. ``plugins``: the folders plugin
    models are imported from (``plugin_folders``)."""
    from bench.metrics import METRICS
    from bench.metrics.generative import preflight

    runs = find_runs(tracker, target)

    def applies(m: str, family: str) -> bool:
        return m not in METRICS or METRICS.get(m).applies_to(family)  # unknown names: validation says so

    if metrics is not None:
        unused = [m for m in metrics if not any(applies(m, r.config["family"]) for r in runs)]
        if unused:
            raise BadRequest(
                f"{target}: --metrics: {', '.join(unused)} apply to none of the runs' model families"
            )
    def asked(r: StoredRun) -> list[str]:
        # a suite's metrics are stored with each of its runs, those of other families included: a
        # GAN of a suite that asks for psnr is evaluated on the metrics that apply to it, as in `bench run`
        wanted = r.config["eval"].get("metrics", []) if metrics is None else metrics
        return [m for m in wanted if applies(m, r.config["family"])]

    suites = [suite_of_run(r, asked(r), overrides, plugins=plugins) for r in runs]
    problems = list(dict.fromkeys(p for s in suites for p in preflight(s.eval)))
    if problems:
        raise BadRequest("\n".join(f"{target}: eval.metrics: {p}" for p in problems))
    for r, s in zip(runs, suites):  # every model's artifacts are read back (BadArtifact) before any log
        load_model(tracker, r, torch.device("cpu"), s.plugins)
    planned = [Planned(r, s, load_data(s)) for r, s in zip(runs, suites)]
    problems = [  # the data found now is the data each run was trained on (it may have moved: dataset.root)
        f"run {p.run.run_id} ({p.run.name}): dataset: the data at {p.data.source} is not what the run was "
        f"trained on (checksum {p.data.checksum}; the run's {p.run.data_digest})"
        for p in planned
        if p.run.data_digest is not None and p.run.data_digest != p.data.checksum
    ]
    if problems:
        raise BadRequest("\n".join(problems))
    problems = [  # the metrics' sizes against the runs' real splits
        f"run {p.run.run_id} ({p.run.name}): {e.loc}: {e.msg}"
        for p in planned
        for e in data_errors(p.suite, p.data, labels=metrics is not None)
    ]
    if problems:
        raise BadRequest("\n".join(dict.fromkeys(problems)))
    return planned


def log_references(tracker: Tracker, planned: list[Planned], device: str | None = None) -> None:
    """The reference row of each experiment evaluated, with every metric requested for any of its runs."""
    from bench.run.context import resolve_device
    from bench.run.reference import log_reference

    for name in dict.fromkeys(p.suite.name for p in planned):
        group = [p for p in planned if p.suite.name == name]
        metrics = list(dict.fromkeys(m for p in group for m in p.suite.eval.metrics))
        first = group[0]
        cfg = first.suite.eval.model_copy(update={"metrics": metrics})
        log_reference(tracker, name, first.data, cfg, resolve_device(device or first.suite.device))


def sample_grid(
    tracker: Tracker,
    run_id: str,
    sampler: str,
    n: int,
    seed: int,
    device: str | None = None,
    plugins: Sequence[str] = (),
) -> tuple[StoredRun, Any]:
    """``n`` samples of a finished run from a sampler, as an (H, W, 3) uint8 grid (``bench sample``)."""
    import math

    from torchvision.utils import make_grid

    from bench.metrics.samplers import SAMPLERS, GMMOptions, draw
    from bench.run.context import resolve_device

    chosen = SAMPLERS.get(sampler)
    if not 1 <= n <= MAX_SAMPLES:
        raise BadRequest(f"-n: a grid holds 1 to {MAX_SAMPLES:,} samples (got {n})")
    runs = find_runs(tracker, run_id)
    if len(runs) != 1:
        raise BadRequest(
            f"{run_id!r} holds {len(runs)} runs; give one run id: " + ", ".join(r.run_id for r in runs)
        )
    run = runs[0]
    if run.config["family"] not in chosen.families:
        raise BadRequest(
            f"sampler {sampler!r} applies to {'/'.join(chosen.families)} models; "
            f"{run.name} is a {run.config['family']} model"
        )
    try:
        suite = suite_of_run(run, [], [], _where(run.run_id, run.name, "config.json"), plugins)
    except SuiteError as e:  # the run's own stored settings, unchanged: its config.json is damaged
        raise BadArtifact(str(e)) from None
    model = load_model(tracker, run, resolve_device(device or suite.device), suite.plugins)  # before the data
    data = load_data(suite)
    e = suite.eval
    images = draw(model, sampler, n, data, seed, e.gmm_components, GMMOptions.of(e))  # (n, C, H, W) in [0, 1]
    grid = make_grid(images.cpu(), nrow=math.ceil(math.sqrt(n)), padding=2, pad_value=1.0)
    return run, (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
