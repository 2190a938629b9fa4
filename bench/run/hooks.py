"""What a suite reports while it runs: one small callback interface that ``run_suite`` calls.

A run (``bench.run.execute``) knows nothing of progress bars or step-indexed images; it calls
these hooks at the points of a run's life (suite start, run start, loss log, evaluation, run
end, suite end) and each concern lives in its own module (``bench.run.progress``,
``bench.run.grids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bench.config import Suite
    from bench.data import ImageData
    from bench.metrics import Result
    from bench.models import GenerativeModel
    from bench.store.tracking import RunLogger
    from bench.suite import RunSpec
    from bench.train import Trainer


@dataclass
class RunContext:
    """Everything a hook may look at while one run trains."""

    spec: RunSpec
    run: RunLogger
    model: GenerativeModel
    data: ImageData
    trainer: Trainer
    device: torch.device


class SuiteHooks:
    """No-op base: override what you need. Hooks must not touch the global RNG (runs stay reproducible)."""

    def suite_started(self, suite: Suite, n_runs: int) -> None: ...

    def run_started(self, ctx: RunContext) -> None: ...

    def logged(self, step: int, losses: dict[str, float]) -> None: ...

    def evaluated(self, step: int, results: dict[str, Result]) -> None: ...

    def run_finished(self, outcome: Any) -> None:  # a bench.run.context.RunOutcome
        ...

    def suite_finished(self, outcomes: Sequence[Any]) -> None:
        """Also called when the suite stops early (Ctrl-C): release terminals and files here."""


class HookList(SuiteHooks):
    """Calls several hooks in order."""

    def __init__(self, hooks: Sequence[SuiteHooks]) -> None:
        self.hooks = list(hooks)

    def suite_started(self, suite, n_runs):
        for h in self.hooks:
            h.suite_started(suite, n_runs)

    def run_started(self, ctx):
        for h in self.hooks:
            h.run_started(ctx)

    def logged(self, step, losses):
        for h in self.hooks:
            h.logged(step, losses)

    def evaluated(self, step, results):
        for h in self.hooks:
            h.evaluated(step, results)

    def run_finished(self, outcome):
        for h in self.hooks:
            h.run_finished(outcome)

    def suite_finished(self, outcomes):
        for h in self.hooks:
            h.suite_finished(outcomes)
