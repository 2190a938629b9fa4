"""ONE budgeted training loop for every model; a model's step kind picks a small step strategy.

The loop stops exactly at the budget (steps, epochs, images or training seconds; no batch is a
single image, which batch norm cannot train on) and records
what it used. Losses stay on the device between log intervals: one host sync per interval, not
per step. All loop state (counters, RNG, optimisers) round-trips through ``state_dict`` so an
interrupted run can continue its budget instead of restarting it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from bench.config import BudgetConfig, TrainConfig
from bench.data import ImageData, batch_indices, steps_per_epoch
from bench.models import GenerativeModel
from bench.numerics import Numerics

Losses = dict[str, torch.Tensor]


class Diverged(RuntimeError):
    """Training produced a non-finite loss or parameter; the message says which and when."""


class Interrupted(Exception):
    """``should_stop`` asked the loop to stop; raised at a step boundary, so the state is whole."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


def _adam(params, p) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=p.lr, betas=(p.beta1, p.beta2), weight_decay=p.weight_decay)


def model_device(model: GenerativeModel) -> torch.device:
    """Where the model lives (CPU for a model without weights: a classical codec)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _numerics(model: GenerativeModel, numerics: Numerics | None) -> Numerics:
    return numerics or Numerics(None, model_device(model))


class ReconstructionStep:
    """One optimiser over the model; minimises ``model.loss(x)["loss"]``."""

    def __init__(self, model: GenerativeModel, numerics: Numerics | None = None) -> None:
        self.opt = _adam(model.optimizer_groups(), model.params)
        self.loss = _numerics(model, numerics).loss_fn(model, "loss")

    def __call__(self, model: GenerativeModel, x: torch.Tensor, step: int) -> Losses:
        losses = self.loss(x)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()
        return {k: v.detach() for k, v in losses.items()}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.opt.load_state_dict(sd["opt"])


class AdversarialStep:
    """A discriminator update every step, a generator update every ``n_critic`` steps."""

    def __init__(self, model: GenerativeModel, numerics: Numerics | None = None) -> None:
        self.opt_d = _adam(model.discriminator.parameters(), model.params)
        self.opt_g = _adam(model.generator.parameters(), model.params)
        numerics = _numerics(model, numerics)
        self.d_loss = numerics.loss_fn(model, "d_loss")
        self.g_loss = numerics.loss_fn(model, "g_loss")

    def __call__(self, model: GenerativeModel, x: torch.Tensor, step: int) -> Losses:
        d = self.d_loss(x, model.sample_z(x.shape[0]))
        self.opt_d.zero_grad(set_to_none=True)
        d["loss"].backward()
        self.opt_d.step()
        model.after_d_step()
        out = {k: v.detach() for k, v in d.items() if k != "loss"}
        if (step + 1) % model.n_critic == 0:
            model.discriminator.requires_grad_(False)  # no D gradients in the G step
            g = self.g_loss(model.sample_z(x.shape[0]))
            self.opt_g.zero_grad(set_to_none=True)
            g["g_loss"].backward()
            self.opt_g.step()
            model.discriminator.requires_grad_(True)
            out.update({k: v.detach() for k, v in g.items()})
        return out

    def state_dict(self) -> dict:
        return {"opt_d": self.opt_d.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.opt_d.load_state_dict(sd["opt_d"])
        self.opt_g.load_state_dict(sd["opt_g"])


class NoStep:
    """A model that trains nothing (a classical codec): the loop ends before its first step."""

    def __init__(self, model: GenerativeModel, numerics: Numerics | None = None) -> None:
        pass

    def __call__(self, model: GenerativeModel, x: torch.Tensor, step: int) -> Losses:
        raise RuntimeError(f"{type(model).__name__} trains nothing")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


STEP_KINDS = {"reconstruction": ReconstructionStep, "adversarial": AdversarialStep, "none": NoStep}


@dataclass
class Progress:
    """What the budget has used so far; also what a finished run reports."""

    step: int = 0
    images: int = 0
    train_seconds: float = 0.0  # optimisation only: evaluation and checkpoints are not charged

    @property
    def images_per_s(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else 0.0


def total_steps(budget: BudgetConfig, n_train: int) -> float:
    """Steps the budget allows (``inf`` for a time budget)."""
    b, kind = budget.batch_size, budget.kind
    if kind == "steps":
        return budget.steps
    if kind == "epochs":
        return budget.epochs * steps_per_epoch(n_train, b)
    if kind == "images":
        return math.ceil(budget.images / b)
    return math.inf


class Trainer:
    """Drives one model through its budget. Callbacks get (step, ...) and may log or evaluate.

    ``train`` (the suite's ``train:`` section) sets the step's numerics: bf16 autocast and
    ``torch.compile``; None is float32, eager."""

    def __init__(
        self,
        model: GenerativeModel,
        data: ImageData,
        budget: BudgetConfig,
        seed: int,
        log_every: int = 50,
        eval_every: int | None = None,
        train: TrainConfig | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.budget = budget
        self.seed = seed
        self.log_every = log_every
        self.eval_every = eval_every
        self.device = model_device(model)
        self.train_config = train or TrainConfig()
        self.step_fn = STEP_KINDS[model.step_kind](model, Numerics(self.train_config, self.device))
        self.progress = Progress()
        self._pending: dict[str, list[torch.Tensor]] = {}  # losses of the steps since the last log

    # ---- checkpointing
    def state_dict(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "step_fn": self.step_fn.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng,
            # a checkpoint between two log steps keeps the losses of that interval, so the
            # resumed run logs the same interval means as an uninterrupted one
            "pending": {k: [t.detach().cpu() for t in v] for k, v in self._pending.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.step_fn.load_state_dict(sd["step_fn"])
        self.progress = Progress(**sd["progress"])
        self._pending = {k: [t.to(self.device) for t in v] for k, v in sd.get("pending", {}).items()}
        torch.set_rng_state(sd["rng"]["cpu"])
        if "cuda" in sd["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(sd["rng"]["cuda"], self.device)

    def done(self) -> bool:
        p, b = self.progress, self.budget
        if self.model.step_kind == "none":  # the budget does not apply to a model that trains nothing
            return True
        if b.kind == "seconds":
            return p.train_seconds >= b.seconds
        if b.kind == "images":
            return p.images >= b.images
        return p.step >= total_steps(b, len(self.data.train_x))

    def run(
        self,
        on_log: Callable[[int, dict[str, float]], None] = lambda step, losses: None,
        on_eval: Callable[[int], None] = lambda step: None,
        on_checkpoint: Callable[[int], None] = lambda step: None,
        checkpoint_every: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Progress:
        """Train until the budget is used; raises ``Diverged``, or ``Interrupted`` when
        ``should_stop()`` turns true (checked after every step, once that step's work is done)."""
        model, data, p = self.model, self.data, self.progress
        n, bs, kind = len(data.train_x), self.budget.batch_size, self.budget.kind
        model.train()
        pending = self._pending
        sync = self.device.type == "cuda"
        while not self.done():
            t0 = time.perf_counter()
            # 1. the batch: an index slice of the resident uint8 tensor
            idx = batch_indices(n, bs, p.step, self.seed, self.device)
            if kind == "images":  # the last batch stops exactly at the budget, or one image past it:
                left = self.budget.images - p.images  # batch norm cannot train on a batch of one
                idx = idx[: max(left, 2) if len(idx) > 1 else left]
            x = data.train_batch(idx, p.step, self.seed)  # (B, C, H, W) in [0, 1]
            # 2. one optimisation step of the model's kind
            try:
                losses = self.step_fn(model, x, p.step)
            except Exception as e:
                # non-finite values spread until an op rejects them (BCE on NaN outputs raises)
                # before the next divergence check: an error after divergence is a divergence
                self._flush(pending, cause=e)
                raise
            for k, v in losses.items():
                pending.setdefault(k, []).append(v)
            if sync and kind == "seconds":
                torch.cuda.synchronize(self.device)  # a time budget needs honest time
            p.step += 1
            p.images += len(idx)
            p.train_seconds += time.perf_counter() - t0
            finished = self.done()
            # 3. losses: one host sync per interval, and the divergence check with it
            if p.step % self.log_every == 0 or finished:
                on_log(p.step, self._flush(pending))
                pending.clear()
            # 4. periodic work outside the budget's clock
            if self.eval_every and p.step % self.eval_every == 0 and not finished:
                on_eval(p.step)
                model.train()
            if checkpoint_every and p.step % checkpoint_every == 0 and not finished:
                on_checkpoint(p.step)
            if not finished and should_stop():
                raise Interrupted(p.step)
        return p

    def _flush(
        self, pending: dict[str, list[torch.Tensor]], cause: Exception | None = None
    ) -> dict[str, float]:
        """Interval means of the losses; raises ``Diverged`` on a non-finite loss or parameter."""
        then = f" (then {type(cause).__name__}: {cause})".splitlines()[0] if cause else ""
        means = {k: torch.stack(v).float().mean() for k, v in pending.items()}
        out: dict[str, float] = {}
        if means:
            values = torch.stack(list(means.values())).cpu().tolist()
            out = dict(zip(means, values))
            bad = [k for k, v in out.items() if not math.isfinite(v)]
            if bad:
                raise Diverged(f"non-finite {', '.join(bad)} before step {self.progress.step}{then}")
        params = list(self.model.parameters())
        finite = torch.stack([torch.isfinite(t).all() for t in params]).all() if params else True
        if not bool(finite):
            raise Diverged(f"non-finite parameters at step {self.progress.step}{then}")
        return out
