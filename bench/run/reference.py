"""Log the reference row: the generation metrics of held-out real images, as a run of its own.

What the row is and how it is computed is ``bench.metrics.reference``; this module only keeps the
experiment's reference run complete. It is the one place that writes the row, whoever asks (a
suite before its runs, ``bench eval`` after them).
"""

from __future__ import annotations

import logging

import torch

from bench.cache import content_key
from bench.config import EvalConfig
from bench.data import ImageData
from bench.metrics.base import METRICS, Result, failure_reason
from bench.metrics.generative import GenerationEval, generation_metric, generation_names
from bench.metrics.reference import protocol
from bench.store.tracking import RunLogger, Tracker, process_alive
from bench.suite import flatten

log = logging.getLogger("bench")


def log_reference(
    tracker: Tracker, suite_name: str, data: ImageData, cfg: EvalConfig, device: torch.device
) -> str | None:
    """Make sure the experiment's reference run holds every requested generation metric.

    Returns the reference run's id; None when the suite asks for no generation metric, or when no
    value of the row could be computed. A metric that fails is logged as an error, never raised
    (the model runs the row accompanies are safe in the store), and is tried again by the next
    ``bench run`` or ``bench eval``; the row keeps the values that were computed.
    """
    names = [m for m in generation_names(cfg.metrics) if data.has_labels or not METRICS.get(m).needs_labels]
    if not names:
        return None
    gen = GenerationEval(data, cfg, seed=0, device=device)
    proto = protocol(gen)
    key = content_key(proto)
    rows = tracker.runs(suite_name, kind="reference")
    same = [r for r in rows if r.data.tags.get("bench.reference_key") == key]
    finished = [r for r in same if r.info.status == "FINISHED"]
    # a row whose process was killed while writing it: its values are kept, the row completed
    orphans = [r for r in same if r.info.status == "RUNNING" and not process_alive(r.data.tags)]
    target = finished[0] if finished else (orphans[0] if orphans else None)
    for r in orphans:
        if r is not target:
            why = "its bench process ended before the row was complete (killed)"
            tracker.close_stale(r, f"{why}; run {target.info.run_id} holds the row")
    have = dict(target.data.metrics) if target is not None else {}
    todo = [n for n in names if n not in have]
    if target is not None and target.info.status == "FINISHED" and not todo:
        return target.info.run_id
    results: dict[str, Result] = {}
    for n in todo:  # each metric on its own: one that fails costs the row no other value
        try:
            results[n] = gen.reference_result(generation_metric(n))
        except Exception as e:  # the row accompanies runs that are safe in the store: never lose them
            log.error("the reference row of %s has no %s: %s", suite_name, n, failure_reason(e), exc_info=e)
    if target is None:
        if not results:
            return None
        run = tracker.start_reference(
            suite_name, {"label": "reference", "family": "data", "model": "data", "bench.reference_key": key}
        )
    elif target.info.status == "FINISHED":
        if results:
            RunLogger(tracker, target.info.run_id).results(0, results)
        return target.info.run_id
    elif not (have or results):  # a killed row with no value, and none computed now
        tracker.close_stale(target, "its bench process ended before any value of the row was logged (killed)")
        return None
    else:
        run = RunLogger(tracker, target.info.run_id)
    run.params(flatten(proto, "reference."))  # the same values again where the killed row logged them
    if results:
        run.results(0, results)
    run.finish("FINISHED")
    return run.run_id
