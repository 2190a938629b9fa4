"""Execute a suite: for each run spec, build the model, train it under the budget, evaluate it,
and record everything in the tracking store. A failed run is a state, not a number: it ends
FAILED with its reason and the suite goes on.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import torch

from bench.data import ImageData, load_dataset
from bench.metrics import evaluate
from bench.metrics.reference import log_reference
from bench.metrics.samplers import fit_latent_sampler
from bench.models import build_model
from bench.suite import RunSpec, Suite, expand, flatten
from bench.tracking import RunLogger, Tracker
from bench.train import Diverged, Progress, Trainer

log = logging.getLogger("bench")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # FINISHED | FAILED | KILLED
    run_id: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def image_grid(images: torch.Tensor, nrow: int = 8):
    """(N, C, H, W) in [0, 1] -> (H', W', 3) uint8 numpy grid, for MLflow images."""
    from torchvision.utils import make_grid

    grid = make_grid(images[: nrow * nrow].float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def run_suite(suite: Suite, suite_yaml: str, tracker: Tracker, device: torch.device) -> list[RunOutcome]:
    """Run every (model, seed) of the suite; returns one outcome per run, in order."""
    data = load_dataset(
        suite.dataset.name, suite.dataset.root, suite.dataset.train_size, suite.dataset.test_size
    )
    data_dev = data.to(device)
    specs = expand(suite)
    parent = tracker.start_suite(suite.name, suite_yaml, len(specs))
    parent.params({"dataset.checksum": data.checksum, "dataset.source": data.source, "device": str(device)})
    outcomes: list[RunOutcome] = []
    try:
        for i, spec in enumerate(specs, 1):
            log.info("[%d/%d] %s", i, len(specs), spec.run_name)
            outcome = run_one(spec, data_dev, tracker, parent, device)
            outcomes.append(outcome)
            log.info("[%d/%d] %s: %s %s", i, len(specs), spec.run_name, outcome.status, outcome.reason)
    except KeyboardInterrupt:
        parent.finish("KILLED")
        raise
    log_reference(tracker, suite.name, data_dev, suite.eval, device)  # the real-data row, once per protocol
    failed = sum(o.status != "FINISHED" for o in outcomes)
    parent.tags({"bench.finished": len(outcomes) - failed, "bench.failed": failed})
    parent.finish("FINISHED" if not failed else "FAILED")
    return outcomes


def run_one(
    spec: RunSpec, data: ImageData, tracker: Tracker, parent: RunLogger, device: torch.device
) -> RunOutcome:
    """Train and evaluate one run, logging as it goes."""
    suite = spec.suite
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.params, data.image_shape).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    run = tracker.start_run(
        parent,
        {
            "family": spec.family,
            "model": spec.model,
            "label": spec.label,
            "seed": str(spec.seed),
            "bench.config_hash": spec.config_hash,
            "bench.suite": suite.name,
        },
        spec.run_name,
    )
    run.params(flatten(spec.resolved()))
    run.text("config.json", json.dumps(spec.resolved(), indent=2, default=str))

    def on_eval(step: int) -> None:
        run.results(step, evaluate(model, data, suite.eval, spec.seed, device))

    trainer = Trainer(model, data, suite.budget, spec.seed, suite.tracking.log_every, suite.eval.every)
    try:
        progress = trainer.run(on_log=run.losses, on_eval=on_eval)
        fit_latent_sampler(model, data, suite.eval.batch_size)  # post-training fits (the AE's Gaussian)
        results = evaluate(model, data, suite.eval, spec.seed, device)
        run.results(progress.step, results)
        run.metrics(progress.step, cost_metrics(progress, n_params, device))
        log_artifacts(run, model, data, spec, device)
    except Diverged as e:
        run.tags({"failure_reason": str(e)})
        run.finish("FAILED")
        return RunOutcome(spec, "FAILED", run.run_id, str(e))
    except KeyboardInterrupt:
        run.tags({"failure_reason": "interrupted (Ctrl-C)"})
        run.finish("KILLED")
        raise
    run.finish("FINISHED")
    return RunOutcome(spec, "FINISHED", run.run_id, metrics={k: r.value for k, r in results.items()})


def cost_metrics(progress: Progress, n_params: int, device: torch.device) -> dict[str, float]:
    """What the run cost: budget used, size, throughput, peak memory."""
    out = {
        "budget_steps": progress.step,
        "budget_images": progress.images,
        "train_seconds": progress.train_seconds,
        "images_per_s": progress.images_per_s,
        "param_count": n_params,
    }
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_artifacts(run: RunLogger, model, data: ImageData, spec: RunSpec, device: torch.device) -> None:
    """Sample grid, reconstruction grid (encoder families), state_dict and the spec to rebuild it."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(spec.seed + 2)
    with torch.inference_mode():
        run.image("samples.png", image_grid(model.sample(64, g)))
        if model.has_encoder:
            x = data.test_x[:32].float().div(255).to(device)
            rec = model.reconstruct(x).clamp(0, 1)
            pairs = torch.stack([x, rec], 1).flatten(0, 1)  # originals and reconstructions interleaved
            run.image("reconstructions.png", image_grid(pairs, nrow=8))
    run.torch_state("model/state_dict.pt", model.state_dict())
    run.text(
        "model/spec.json",
        json.dumps({"model": spec.model, "params": spec.params, "image_shape": list(data.image_shape)}),
    )
