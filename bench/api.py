"""``bench.evaluate``: score a model trained elsewhere, or any callable from noise to images, with
bench's metrics (``bench.run``, the other half of the Python API, is ``bench.run.api``).

It raises instead of exiting: ``SuiteError`` for a bad request (every problem, with its field),
``DataError`` for data that cannot be read, ``TrackingError`` for a store that cannot be reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from bench import numerics
from bench.config import BudgetConfig, DatasetConfig, EvalConfig, Suite
from bench.data import ImageData, config_problems, dataset_problem, from_config
from bench.metrics import METRICS, Result, data_problems
from bench.metrics.pixels import unit_images
from bench.models import GenerativeModel, ModelParams
from bench.suite import IMAGEFOLDER_NEEDS_ROOT, FieldError, SuiteError, pydantic_errors

# --------------------------------------------------------------------------- evaluate


class CallableGenerator(GenerativeModel):
    """Any callable from noise (n, z_dim) ~ N(0, I) to images (n, C, H, W), float in [0, 1] or
    uint8, as a model of the gan family: what sample-based metrics score."""

    family = "gan"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], z_dim: int, image_shape, device) -> None:
        super().__init__(ModelParams(), image_shape)
        self.fn, self.z_dim = fn, z_dim
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)  # holds the device

    def sample(self, n, generator=None):
        z = torch.randn(n, self.z_dim, generator=generator, device=self.anchor.device)
        x = torch.as_tensor(self.fn(z))
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if tuple(x.shape) != (n, *self.image_shape):
            raise ValueError(
                f"the generator returned images of shape {tuple(x.shape)}; expected {(n, *self.image_shape)}"
            )
        return unit_images(x.detach().to(self.anchor.device).float(), "the generator")

    def d_loss(self, x, z):  # evaluation only
        raise NotImplementedError

    g_loss = sample_z = d_loss


def _dataset_config(dataset: str | Mapping[str, Any] | DatasetConfig | ImageData) -> DatasetConfig | None:
    """The ``dataset`` section a request names (None for data loaded by the caller), checked as
    ``bench validate`` checks a suite's: a ``SuiteError`` with the field of each problem. An image
    folder's ``root`` must name a folder (a request for one that is not there is a bad request);
    what is in the folder is read later, and a problem there is a ``DataError``."""
    if isinstance(dataset, ImageData):
        return None
    if isinstance(dataset, DatasetConfig):
        cfg = dataset
    else:
        try:
            cfg = DatasetConfig(**({"name": dataset} if isinstance(dataset, str) else dataset))
        except ValidationError as e:  # as a suite's dataset section: each problem with its field
            raise SuiteError("bench.evaluate", pydantic_errors(e, ("dataset",))) from None
        except TypeError as e:  # not a mapping
            raise SuiteError("bench.evaluate", [FieldError("dataset", str(e))]) from None
    problem = dataset_problem(cfg.name)
    if problem:
        raise SuiteError("bench.evaluate", [FieldError("dataset.name", problem)])
    errors = [FieldError(loc, msg) for loc, msg in config_problems(cfg)]
    if cfg.name == "imagefolder":
        if cfg.root is None:
            errors.append(FieldError("dataset.root", IMAGEFOLDER_NEEDS_ROOT))
        elif not Path(cfg.root).expanduser().is_dir():
            where = Path(cfg.root).expanduser()
            msg = f"{where}: folder not found (imagefolder reads <root>/train and <root>/test)"
            errors.append(FieldError("dataset.root", msg))
    if errors:
        raise SuiteError("bench.evaluate", errors)
    return cfg


def _check(request: Suite, names: list[str], model: GenerativeModel, data: ImageData) -> None:
    """The metrics' static checks on ``request`` (the suite a metric's check reads: no training,
    so no models and an empty budget, none of its kinds set), then their sizes against the data's
    splits."""
    problems = [
        FieldError(f"eval.metrics.{i}", p)
        for i, m in enumerate(names)
        if METRICS.get(m).applies_to_model(model)
        for p in METRICS.get(m).check(request)
    ]
    problems += [FieldError(f"eval.metrics.{i}", p) for i, p in data_problems(request.eval, data, [model])]
    if problems:
        raise SuiteError("bench.evaluate", problems)


def evaluate(
    model_or_generator: GenerativeModel | Callable[[torch.Tensor], torch.Tensor],
    dataset: str | Mapping[str, Any] | DatasetConfig | ImageData = "synthetic",
    metrics: Iterable[str] = ("fid",),
    n_samples: int = 10000,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    z_dim: int = 128,
    tracking_uri: str | None = None,
    experiment: str = "evaluate",
    **eval_options: Any,
) -> dict[str, Result]:
    """Score a model trained elsewhere (a ``GenerativeModel``) or any callable from noise
    (n, ``z_dim``) to images (n, C, H, W) in [0, 1], on ``dataset`` (a registered name, a
    ``dataset`` section as a dict, or loaded ``ImageData``), with the suite metrics ``metrics``.

    ``eval_options`` are further ``eval`` settings (``n_real``, ``reference_split``, ...).
    Returns {metric: Result(value, provenance)}; metrics that do not apply are absent (n/a).
    With ``tracking_uri`` the values and their provenance are also logged to MLflow, as one run
    of ``experiment``."""
    names = list(metrics)
    try:
        cfg = EvalConfig(metrics=names, n_samples=n_samples, **eval_options)
    except ValidationError as e:  # each problem with its field, eval.n_real, as in a suite file
        raise SuiteError("bench.evaluate", pydantic_errors(e, ("eval",))) from None
    except Exception as e:
        raise SuiteError("bench.evaluate", [FieldError("eval", str(e))]) from None
    unknown = [
        FieldError(f"eval.metrics.{i}", METRICS.unknown_message(m))
        for i, m in enumerate(names)
        if m not in METRICS
    ]
    if unknown:
        raise SuiteError("bench.evaluate", unknown)
    dataset_cfg = _dataset_config(dataset)
    data = dataset if dataset_cfg is None else from_config(dataset_cfg)
    dev = torch.device(device)
    if isinstance(model_or_generator, GenerativeModel):
        model = model_or_generator.to(dev)
    elif callable(model_or_generator):
        model = CallableGenerator(model_or_generator, z_dim, data.image_shape, dev)
    else:
        raise TypeError("evaluate() takes a bench GenerativeModel or a callable from noise to images")
    # what `bench validate` and `bench run` check before any work: the settings, then the sizes
    request = Suite.model_construct(
        name=experiment,
        dataset=dataset_cfg or DatasetConfig.model_construct(name=data.name),
        budget=BudgetConfig.model_construct(),
        seeds=[seed],
        device=str(dev),
        eval=cfg,
        models=[],
    )
    _check(request, names, model, data)
    from bench.metrics import evaluate as compute
    from bench.metrics.samplers import LATENT_FIT_SECONDS, fit_latent_sampler

    on_dev = data.to(dev)
    t0 = time.perf_counter()
    with numerics.evaluation(model, cfg.precision, dev):  # the codes evaluate shares
        fitted = fit_latent_sampler(model, on_dev, cfg.batch_size)
    seconds = {LATENT_FIT_SECONDS: time.perf_counter() - t0} if fitted else {}
    per_metric: dict[str, float] = {}
    results = compute(model, on_dev, cfg, seed, dev, per_metric)
    # as `bench run` logs them: the whole, the latent fit and each metric's share
    seconds = {
        "eval_seconds": time.perf_counter() - t0,
        **seconds,
        **{f"eval_seconds.{name}": s for name, s in per_metric.items()},
    }
    results = {
        k: Result(r.value, {**r.provenance, "dataset": data.name, "dataset_checksum": data.checksum}, r.extra)
        for k, r in results.items()
    }
    if tracking_uri is not None:
        _log(tracking_uri, experiment, model, data, cfg, seed, results, seconds)
    return results


def _log(uri, experiment, model, data, cfg, seed, results, seconds) -> str:
    """One MLflow run (tag ``bench.kind=evaluation``) holding the values and their provenance."""
    from bench.store.tracking import RunLogger, Tracker
    from bench.suite import flatten

    tracker = Tracker(uri)
    tracker.check()
    fn = getattr(model, "fn", None)
    name = getattr(fn, "__name__", "generator") if fn is not None else type(model).__name__
    tags = {"bench.kind": "evaluation", "label": name, "family": model.family, "model": name}
    created = tracker.call(
        tracker.client.create_run, tracker.experiment_id(experiment), run_name=name, tags=tags
    )
    run = RunLogger(tracker, created.info.run_id)
    run.params(flatten({"eval": cfg.model_dump(), "seed": seed, "dataset": data.name}))
    run.params({"dataset.checksum": data.checksum, "dataset.source": data.source})
    run.results(0, results)
    run.metrics(0, seconds)
    run.finish("FINISHED")
    return run.run_id
