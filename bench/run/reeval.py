"""Evaluation and sampling of finished runs, from what the tracking store holds.

``bench eval`` rebuilds each run's model from its logged ``model/spec.json`` and
``model/state_dict.pt``, validates the requested metrics against the run's own suite settings
(the same checks as ``bench validate``), computes them and logs them into the same run, at the
run's final step, with their provenance. ``bench sample`` draws images from a finished run.
Neither needs the training set-up.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import numerics
from bench.config import EvalConfig, Suite
from bench.data import ImageData, from_config
from bench.metrics import MetricFailure, Result, evaluate
from bench.metrics.samplers import fit_latent_sampler
from bench.models import GenerativeModel, build_model
from bench.store.tracking import METRIC_FAILED_TAG, RunLogger, Tracker
from bench.suite import apply_overrides, data_errors, validate_suite


class RunNotFound(LookupError):
    """The target names neither an experiment with finished runs nor a run."""


class BadRequest(ValueError):
    """A request that cannot be served here (metrics for no run, missing weights); one line per problem."""


@dataclass(frozen=True)
class StoredRun:
    """A finished run as the store holds it: identity, resolved config, final step."""

    run_id: str
    name: str
    config: dict[str, Any]  # the run's config.json: the resolved RunSpec
    step: int  # the final training step (where its final metrics are logged)
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


def _stored(tracker: Tracker, run: Any) -> StoredRun:
    with tempfile.TemporaryDirectory() as d:
        config = json.loads(tracker.download(run.info.run_id, "config.json", d).read_text())
    step = int(run.data.metrics.get("budget_steps", 0))
    return StoredRun(
        run.info.run_id, run.info.run_name, config, step, dict(run.data.metrics), dict(run.data.tags)
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


def suite_of_run(run: StoredRun, metrics: list[str] | None, overrides: list[str]) -> Suite:
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
        "models": [{"name": c["model"], "label": c["label"], **c["params"]}],
    }
    if "plugin" in c:  # a plugin model: found where the run found it
        raw["plugins"] = list(c["plugin"].get("paths", []))
    where = f"run {run.run_id} ({run.name})"
    return validate_suite(apply_overrides(raw, overrides, where), where)


def load_data(suite: Suite) -> ImageData:
    d = suite.dataset
    return from_config(d)


def load_model(tracker: Tracker, run: StoredRun, device: torch.device) -> GenerativeModel:
    """The run's trained model, rebuilt from its spec and state_dict, in eval mode on ``device``."""
    with tempfile.TemporaryDirectory() as d:
        spec = json.loads(tracker.download(run.run_id, "model/spec.json", d).read_text())
        state = torch.load(
            tracker.download(run.run_id, "model/state_dict.pt", d), map_location=device, weights_only=True
        )
    paths = spec.get("plugin_paths", ())
    model = build_model(spec["model"], spec["params"], tuple(spec["image_shape"]), paths).to(device)
    model.load_state_dict(state)
    return model.eval()


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
    model = load_model(tracker, run, device)
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
    tracker: Tracker, target: str, metrics: list[str] | None, overrides: list[str]
) -> list[Planned]:
    """Find the runs, validate the request for each (a metric that does not apply to a run's family
    is n/a there, as in ``bench run``), load their data, and check the machine has what the
    metrics need. Raises before anything is computed or written."""
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
    suites = [
        suite_of_run(
            r, None if metrics is None else [m for m in metrics if applies(m, r.config["family"])], overrides
        )
        for r in runs
    ]
    problems = list(dict.fromkeys(p for s in suites for p in preflight(s.eval)))
    if problems:
        raise BadRequest("\n".join(f"{target}: eval.metrics: {p}" for p in problems))
    planned = [Planned(r, s, load_data(s)) for r, s in zip(runs, suites)]
    problems = [  # the metrics' sizes against the runs' real splits
        f"run {p.run.run_id} ({p.run.name}): {e.loc}: {e.msg}"
        for p in planned
        for e in data_errors(p.suite, p.data)
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
    tracker: Tracker, run_id: str, sampler: str, n: int, seed: int, device: str | None = None
) -> tuple[StoredRun, Any]:
    """``n`` samples of a finished run from a sampler, as an (H, W, 3) uint8 grid (``bench sample``)."""
    import math

    from torchvision.utils import make_grid

    from bench.metrics.samplers import SAMPLERS, GMMOptions, draw
    from bench.run.context import resolve_device

    chosen = SAMPLERS.get(sampler)
    if n < 1:
        raise BadRequest(f"-n: need at least one sample (got {n})")
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
    suite = suite_of_run(run, [], [])
    data = load_data(suite)
    model = load_model(tracker, run, resolve_device(device or suite.device))
    e = suite.eval
    images = draw(model, sampler, n, data, seed, e.gmm_components, GMMOptions.of(e))  # (n, C, H, W) in [0, 1]
    grid = make_grid(images.cpu(), nrow=math.ceil(math.sqrt(n)), padding=2, pad_value=1.0)
    return run, (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
