"""The reference row: the generation metrics of held-out real images against the reference set.

Held-out real images (the first ``eval.n_samples`` images of the split that is not the reference
split) scored exactly like a model's samples: the floor a model can reach under the suite's
protocol (same extractors, same n_real and n_fake, same reference split). The values are computed
once per dataset and protocol (cached on disk) and logged once per experiment as a run tagged
``bench.kind=reference``, ``label=reference``, ``family=data``, with the metrics under the same
names as the model runs and the same ``provenance.<metric>`` tags. A later ``bench eval`` that
adds metrics adds them to that same run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from bench.cache import content_key
from bench.data import ImageData
from bench.metrics.base import Result
from bench.metrics.generative import GENERATION, GenerationEval

if TYPE_CHECKING:
    from bench.suite import EvalConfig
    from bench.tracking import Tracker

log = logging.getLogger("bench")

VERSION = 1  # bump when what a reference row means changes


def protocol(gen: GenerationEval) -> dict[str, Any]:
    """What identifies a reference row: the data, both image sets and the metric settings."""
    cfg, ref, held = gen.cfg, gen.reference, gen.heldout
    return {
        "dataset": gen.full.name,
        "dataset_checksum": gen.full.checksum,
        "reference_split": ref.split,
        "n_real": ref.n,
        "heldout_split": held.split,
        "n_fake": held.n,
        "inception_weights": cfg.inception_weights,
        "kid_subsets": cfg.kid_subsets,
        "kid_subset_size": cfg.kid_subset_size,
        "prc_neighborhood": cfg.prc_neighborhood,
        "isc_splits": cfg.isc_splits,
        "version": VERSION,
    }


def reference_results(names: list[str], data: ImageData, cfg: EvalConfig, device: torch.device) -> dict:
    """{metric name: Result} of held-out real images, for the generation metrics among ``names``."""
    gen = GenerationEval(data, cfg, seed=0, device=device)
    return {n: gen.reference_result(GENERATION[n]) for n in names if n in GENERATION}


def log_reference(
    tracker: Tracker, suite_name: str, data: ImageData, cfg: EvalConfig, device: torch.device
) -> str | None:
    """Make sure the experiment's reference run holds every requested generation metric.

    Returns the reference run's id; None when the suite asks for no generation metric, or when
    computing the row failed (logged as an error, never raised: the model runs it accompanies are
    already safe in the store).
    """
    names = [m for m in cfg.metrics if m in GENERATION]
    if not names:
        return None
    gen = GenerationEval(data, cfg, seed=0, device=device)
    proto = protocol(gen)
    key = content_key(proto)
    existing = [
        r
        for r in tracker.runs(suite_name, kind="reference")
        if r.data.tags.get("bench.reference_key") == key and r.info.status == "FINISHED"
    ]
    if existing and all(n in existing[0].data.metrics for n in names):
        return existing[0].info.run_id
    todo = [n for n in names if not existing or n not in existing[0].data.metrics]
    try:  # compute first: a failure leaves no half-made row in the store
        results: dict[str, Result] = {n: gen.reference_result(GENERATION[n]) for n in todo}
    except Exception as e:  # the row accompanies runs that are already safe in the store: never lose them
        log.error("the reference row of %s was not computed: %s: %s", suite_name, type(e).__name__, e)
        return None
    if existing:
        from bench.tracking import RunLogger

        run = RunLogger(tracker, existing[0].info.run_id)
        run.results(0, results)
        return run.run_id
    from bench.suite import flatten

    run = tracker.start_reference(
        suite_name, {"label": "reference", "family": "data", "model": "data", "bench.reference_key": key}
    )
    run.params(flatten(proto, "reference."))
    run.results(0, results)
    run.finish("FINISHED")
    return run.run_id
