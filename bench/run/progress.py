"""Progress of ``bench run``: a bar per run and one for the suite on a terminal, log lines otherwise.

On a terminal (stderr is a TTY) the suite bar counts runs ("finished 3, failed 1") and the run
bar counts the budget (steps, or training seconds for a time budget) with the latest losses and
tqdm's ETA. When stderr is a file or a pipe (CI, ``nohup``), the same facts are written as plain
log lines: the start and end of each run, and its progress at every evaluation and every tenth
of the budget.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from bench.run.grids import StepImages
from bench.run.hooks import HookList, RunContext, SuiteHooks

log = logging.getLogger("bench")


def _losses(losses: dict[str, float], limit: int = 4) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in list(losses.items())[:limit])


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}" if m else f"{s}s"


class ProgressReporter(SuiteHooks):
    """Suite and run progress on ``stream`` (default stderr); bars only when it is a terminal."""

    def __init__(self, stream: IO[str] | None = None, bars: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.n_runs = 0
        self.index = 0
        self.finished = 0
        self.failed = 0
        self.ctx: RunContext | None = None
        self._suite_bar: Any = None
        self._run_bar: Any = None
        self._redirect: Any = None
        self._t0 = 0.0
        self._done0 = 0.0
        self._next_line = 0.0  # budget fraction of the next plain progress line
        self._losses: dict[str, float] = {}

    # ---- budget arithmetic shared by both modes
    def _total(self) -> tuple[float, str]:
        """The run's budget and its unit: steps, or training seconds for a time budget."""
        from bench.train import total_steps

        budget = self.ctx.spec.suite.budget
        if budget.kind == "seconds":
            return budget.seconds, "s"
        return total_steps(budget, len(self.ctx.data.train_x)), "step"

    def _done(self, step: int) -> float:
        _, unit = self._total()
        return self.ctx.trainer.progress.train_seconds if unit == "s" else step

    def _eta(self, done: float, total: float) -> float:
        elapsed = time.perf_counter() - self._t0
        done_here = done - self._done0
        return elapsed / done_here * (total - done) if done_here > 0 else math.inf

    def _name(self) -> str:
        return f"[{self.index}/{self.n_runs}] {self.ctx.spec.run_name}"

    def _counts(self) -> str:
        return f"{self.finished} finished, {self.failed} failed"

    # ---- hooks
    def suite_started(self, suite, n_runs: int) -> None:
        self.n_runs, self.index, self.finished, self.failed = n_runs, 0, 0, 0
        if self.bars:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()  # log lines go above the bars instead of through them
            self._suite_bar = tqdm(
                total=n_runs, desc=f"suite {suite.name}", unit="run", file=self.stream, position=0, leave=True
            )
            self._suite_bar.set_postfix_str(self._counts())
        else:
            log.info("suite %s: %d runs", suite.name, n_runs)

    def run_started(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.index += 1
        self._t0 = time.perf_counter()
        self._done0 = self._done(ctx.trainer.progress.step)  # a resumed run starts past 0
        self._next_line = 0.1
        self._losses = {}
        total, unit = self._total()
        if self.bars:
            from tqdm.auto import tqdm

            self._run_bar = tqdm(
                total=total, desc=self._name(), unit=unit, file=self.stream, position=1, leave=False
            )
        else:
            log.info(
                "%s: started (%s %s)", self._name(), f"{total:g}", unit + ("s" if unit == "step" else "")
            )

    def logged(self, step: int, losses: dict[str, float]) -> None:
        if self.ctx is None:
            return
        self._losses = losses
        total, unit = self._total()
        done = self._done(step)
        if self._run_bar is not None:
            self._run_bar.set_postfix_str(_losses(losses), refresh=False)
            self._run_bar.update(min(done, total) - self._run_bar.n)  # redraws
        elif total > 0 and done / total >= self._next_line and done < total and not self._evaluates(step):
            self._line(step, done, total, unit)
            self._next_line = math.floor(done / total * 10 + 1) / 10

    def _evaluates(self, step: int) -> bool:
        """Whether an evaluation follows this log step (its line then carries the losses too)."""
        every = self.ctx.spec.suite.eval.every
        return bool(every) and step % every == 0

    def evaluated(self, step: int, results) -> None:
        if self.ctx is None or self._run_bar is not None:
            return
        total, unit = self._total()
        done = self._done(step)
        if done < total:
            shown = ", ".join(f"{k} {r.value:.4g}" for k, r in list(results.items())[:3])
            self._line(step, done, total, unit, f"eval: {shown}" if shown else "eval")
            self._next_line = math.floor(done / total * 10 + 1) / 10

    def _line(self, step: int, done: float, total: float, unit: str, extra: str = "") -> None:
        where = f"step {step}/{total:g}" if unit == "step" else f"{done:.1f}/{total:g} s"
        parts = [
            f"{where} ({done / total:.0%})",
            _losses(self._losses),
            extra,
            f"eta {_duration(self._eta(done, total))}",
        ]
        log.info("%s: %s", self._name(), ", ".join(p for p in parts if p))

    def run_finished(self, outcome) -> None:
        if getattr(outcome, "skipped", False):  # finished by an earlier `bench run`: never started here
            self.index += 1
            self.finished += 1
            msg = f"[{self.index}/{self.n_runs}] {outcome.spec.run_name}: skipped (finished earlier)"
            if self.bars:
                self._suite_bar.write(msg, file=self.stream)
                self._suite_bar.set_postfix_str(self._counts(), refresh=False)
                self._suite_bar.update(1)
            else:
                log.info(msg)
            return
        if outcome.status == "FINISHED":
            self.finished += 1
        else:
            self.failed += 1
        if self.ctx is None:  # carried out by another process (--jobs, Ray): only its end is seen here
            self.index += 1
            name, took = f"[{self.index}/{self.n_runs}] {outcome.spec.run_name}", _duration(outcome.seconds)
        else:
            name, took = self._name(), _duration(time.perf_counter() - self._t0)
        msg = f"{name}: {outcome.status} in {took}" + (f" ({outcome.reason})" if outcome.reason else "")
        if self.bars:
            if self._run_bar is not None:
                self._run_bar.refresh()  # draw the final state, whatever tqdm's redraw interval skipped
                self._run_bar.close()
                self._run_bar = None
            self._suite_bar.write(msg, file=self.stream)
            self._suite_bar.set_postfix_str(self._counts(), refresh=False)
            self._suite_bar.update(1)
        else:
            log.info("%s; suite: %d of %d runs done, %s", msg, self.index, self.n_runs, self._counts())
        self.ctx = None

    def suite_finished(self, outcomes: Sequence[Any]) -> None:
        for bar in (self._run_bar, self._suite_bar):
            if bar is not None:
                bar.close()
        self._run_bar = self._suite_bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def default_hooks(progress: bool = False) -> HookList:
    """Step-indexed sample/reconstruction grids always (they are part of what a run records);
    progress bars or log lines when ``progress``."""
    hooks: list[SuiteHooks] = [StepImages()]
    if progress:
        hooks.append(ProgressReporter())
    return HookList(hooks)
