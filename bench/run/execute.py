"""Carry one run out: build the model, train it under the budget, evaluate it, log everything.

``Execution`` is one run: what it needs comes in one ``SuiteEnv``, and each step of its life is a
method, so ``run`` reads as the list of steps. Which run to carry out (skip, resume, start) is
``bench.run.lifecycle``'s decision, made before an ``Execution`` exists.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import traceback
from pathlib import Path

import torch

from bench import numerics
from bench.data import ImageData
from bench.metrics import Result, evaluate
from bench.metrics.samplers import LATENT_FIT_SECONDS, fit_latent_sampler
from bench.models import GenerativeModel, build_model
from bench.run.checkpoint import CheckpointError, RunFolder
from bench.run.context import Resume, RunOutcome, SuiteEnv, finish_quietly
from bench.run.grids import reconstruction_grid, sample_grid
from bench.run.hooks import RunContext
from bench.store.tracking import METRIC_FAILED_TAG, RunLogger, redact_uri
from bench.suite import RunSpec, flatten
from bench.train import Diverged, Interrupted, Progress, Trainer, total_steps

log = logging.getLogger("bench")

STORED_CHECKPOINT = "checkpoint"  # artifact folder of a run's last checkpoint, when kept in the store


class Execution:
    """One run of one spec, from a fresh start or from ``resume``."""

    def __init__(self, spec: RunSpec, env: SuiteEnv, folder: RunFolder, resume: Resume | None) -> None:
        self.spec, self.env, self.folder, self.resume = spec, env, folder, resume
        self.t_start = time.perf_counter()
        self.clock = {"eval_seconds": 0.0, "checkpoint_seconds": 0.0}
        self.failed: dict[str, tuple[str, str]] = {}  # metric: (reason, traceback) of the last failure
        self.run_logger: RunLogger | None = None
        self.model_capabilities: frozenset[str] = frozenset()  # known once the model is built
        self.model_likelihood = ""  # the decoder distribution, for models with a likelihood

    # 1. the model and its trainer, seeded
    def build(self) -> tuple[GenerativeModel, Trainer]:
        spec, suite, data = self.spec, self.spec.suite, self.env.data
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, spec.params, data.image_shape, suite.plugin_paths).to(self.env.device)
        self.model_capabilities = model.capabilities
        if "likelihood" in model.capabilities:
            self.model_likelihood = model.likelihood
        trainer = Trainer(
            model,
            data,
            suite.budget,
            spec.seed,
            suite.tracking.log_every,
            suite.eval.every,
            train=suite.train,
        )
        return model, trainer

    # 1b. the checkpoint's state, when resuming
    def restore(self, model: GenerativeModel, trainer: Trainer) -> tuple[GenerativeModel, Trainer]:
        """The model and trainer at the checkpoint's step. A checkpoint whose state does not fit them
        (a damaged or forged file) is not trusted: a warning names it, it is deleted, and the run is
        trained again from step 0 with a model and trainer built afresh (the failed load may have
        changed some weights, or the random state)."""
        resume = self.resume
        if resume is None or resume.state is None:
            return model, trainer
        try:
            load_trainer_state(trainer, resume.state["trainer"], self.folder.checkpoint)
        except CheckpointError as e:
            log.warning("%s; %s starts from step 0", e, self.spec.run_name)
            self.folder.clear_checkpoint()
            self.resume = Resume(resume.run_id, 0, None)
            return self.build()
        return model, trainer

    # 2. the MLflow run: continued, or started as a child of the suite run
    def open_run(self) -> RunLogger:
        spec, tracker, folder, resume = self.spec, self.env.tracker, self.folder, self.resume
        if resume is not None:
            run = tracker.resume_run(resume.run_id, offline_dir=folder.offline)
            run.tags({"bench.resumed_from_step": resume.step, "bench.threads": torch.get_num_threads()})
            if resume.state is None:  # it may have died before logging its config
                folder.clear_checkpoint()
                self._log_config(run)
                log.info(
                    "%s: run %s left no checkpoint to resume from; training it again from step 0",
                    spec.run_name,
                    run.run_id,
                )
            else:
                log.info(
                    "%s: resuming run %s from its checkpoint at step %d",
                    spec.run_name,
                    run.run_id,
                    resume.step,
                )
        else:
            folder.clear_checkpoint()
            run = tracker.start_run(self.env.parent, self._tags(), spec.run_name, offline_dir=folder.offline)
            self._log_config(run)
            log_dataset(run, self.env.data)
        folder.write_info(
            {
                "uri": redact_uri(tracker.uri),
                "run_id": run.run_id,
                "run_name": spec.run_name,
                "suite": spec.suite.name,
            }
        )
        return run

    def _tags(self) -> dict[str, str]:
        spec = self.spec
        return {
            "family": spec.family,
            "model": spec.model,
            "label": spec.label,
            "seed": str(spec.seed),
            "bench.config_hash": spec.config_hash,
            "bench.suite": spec.suite.name,
            "bench.threads": str(torch.get_num_threads()),
            # what the model offers beyond its family: the report reads which metrics apply from it
            "bench.capabilities": ",".join(sorted(self.model_capabilities)),
            **({"bench.likelihood": self.model_likelihood} if self.model_likelihood else {}),
            # published values the suite compares this model with (not part of the config hash)
            **{
                f"bench.published.{metric}": json.dumps(pv.model_dump(), sort_keys=True)
                for metric, pv in (spec.suite.models[spec.index].reference or {}).items()
            },
        }

    def _log_config(self, run: RunLogger) -> None:
        run.params(flatten(self.spec.resolved()))
        run.text("config.json", json.dumps(self.spec.resolved(), indent=2, default=str))

    # 3. evaluation (timed), at every ``eval.every`` and at the end
    def evaluate(self, model: GenerativeModel, step: int) -> dict[str, Result]:
        """Evaluate; the time goes to ``eval_seconds`` and each metric's to ``eval_seconds.<metric>``
        (summed over the run's evaluations; what metrics share is charged to the first that needs it).
        A metric that raises is logged with its traceback and the others are still computed: its
        error is in ``self.failed`` until an evaluation computes it."""
        t0, per_metric, failed = time.perf_counter(), {}, {}
        results = evaluate(
            model, self.env.data, self.spec.suite.eval, self.spec.seed, self.env.device, per_metric, failed
        )
        self.clock["eval_seconds"] += time.perf_counter() - t0
        for name, seconds in per_metric.items():
            key = f"eval_seconds.{name}"
            self.clock[key] = self.clock.get(key, 0.0) + seconds
        for name, f in failed.items():
            log.error("%s: metric %s failed at step %d:\n%s", self.spec.run_name, name, step, f.traceback)
            self.failed[name] = (f.reason, f"step {step}, metric {name}:\n{f.traceback}")
        for name in results:
            self.failed.pop(name, None)
        return results

    def log_failed_metrics(self, run: RunLogger) -> None:
        """The metrics the final evaluation could not compute: a ``metric_failed.<name>`` tag each
        (the report shows why), and their tracebacks in ``metric_errors.txt``."""
        if self.failed:
            run.tags({METRIC_FAILED_TAG + name: reason for name, (reason, _) in self.failed.items()})
            run.text("metric_errors.txt", "\n".join(trace for _, trace in self.failed.values()))

    # 4. a checkpoint: the store first holds every value up to this step
    def checkpoint(self, run: RunLogger, trainer: Trainer, step: int) -> None:
        t0 = time.perf_counter()
        run.flush()
        state = {
            "run_id": run.run_id,
            "uri": redact_uri(self.env.tracker.uri),  # no credentials on disk
            "config_hash": self.spec.config_hash,
            "step": step,
            "trainer": trainer.state_dict(),
        }
        self.folder.save_checkpoint(state)
        if self.env.options.store_checkpoints:  # where a retry on another node finds it
            run.file(self.folder.checkpoint, STORED_CHECKPOINT)
        self.clock["checkpoint_seconds"] += time.perf_counter() - t0

    def outcome(self, run: RunLogger, status: str, reason: str = "", metrics=None) -> RunOutcome:
        offline = self.folder.path if run.offline else None
        failed = {name: why for name, (why, _) in self.failed.items()} if status == "FINISHED" else {}
        if failed and not reason:
            reason = "; ".join(f"{name} failed: {why}" for name, why in failed.items())
        return RunOutcome(
            self.spec,
            status,
            run.run_id,
            run.lost_reason if offline is not None else reason,
            metrics or {},
            resumed_from=self.resume.step if self.resume else None,
            offline=offline,
            seconds=time.perf_counter() - self.t_start,
            failed_metrics=failed,
        )

    # the whole life: 1-4, then the final evaluation, artifacts and cost; failures are states
    def run(self) -> RunOutcome:
        spec, env, hooks = self.spec, self.env, self.env.hooks
        try:  # what validation let through (a width too large for memory, a device) fails this run only
            model, trainer = self.restore(*self.build())
        except Exception as e:
            return self.fail(self.open_run(), e, "cannot build the model: ")
        run = self.open_run()
        hooks.run_started(RunContext(spec, run, model, env.data, trainer, env.device))

        def on_log(step: int, losses: dict[str, float]) -> None:
            run.losses(step, losses)
            hooks.logged(step, losses)

        def on_eval(step: int) -> None:
            results = self.evaluate(model, step)
            run.results(step, results)
            hooks.evaluated(step, results)

        try:
            progress = trainer.run(
                on_log=on_log,
                on_eval=on_eval,
                on_checkpoint=lambda step: self.checkpoint(run, trainer, step),
                checkpoint_every=spec.suite.checkpoint.every,
                should_stop=env.stop,
            )
            results = self.finish_training(run, model, progress)
        except Diverged as e:
            run.tags({"failure_reason": str(e)})
            run.finish("FAILED")
            self.folder.clear_checkpoint()  # resuming would diverge again: a new `bench run` starts afresh
            return self.outcome(run, "FAILED", str(e))
        except Interrupted as e:
            self.checkpoint(run, trainer, e.step)
            run.tags({"failure_reason": f"interrupted at step {e.step}; `bench run` again resumes it"})
            run.finish("KILLED")
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the last periodic checkpoint stands
            run.tags({"failure_reason": "interrupted (Ctrl-C)"})
            finish_quietly(run, "KILLED")
            raise
        except Exception as e:  # any other error fails this run only; its checkpoint stays for a retry
            return self.fail(run, e)
        if run.offline:  # keep the final state beside the journal until it is re-logged
            self.checkpoint(run, trainer, progress.step)
        run.finish("FINISHED")
        if not run.offline:
            self.folder.clear_checkpoint()
        return self.outcome(run, "FINISHED", metrics={k: r.value for k, r in results.items()})

    def finish_training(
        self, run: RunLogger, model: GenerativeModel, progress: Progress
    ) -> dict[str, Result]:
        """Post-training fits, the final evaluation, the artifacts and what the run cost."""
        t0 = time.perf_counter()
        cfg = self.spec.suite.eval
        with numerics.evaluation(model, cfg.precision, self.env.device):  # the codes evaluate shares
            fitted = fit_latent_sampler(model, self.env.data, cfg.batch_size)  # e.g. the AE's Gaussian
        seconds = time.perf_counter() - t0
        self.clock["eval_seconds"] += seconds
        if fitted:  # its own column beside the metrics': it encodes the training split they share
            self.clock[LATENT_FIT_SECONDS] = self.clock.get(LATENT_FIT_SECONDS, 0.0) + seconds
        results = self.evaluate(model, progress.step)
        run.results(progress.step, results)
        self.log_failed_metrics(run)
        self.env.hooks.evaluated(progress.step, results)
        log_artifacts(run, model, self.env.data, self.spec, self.env.device)
        run.model(copy.deepcopy(model).cpu().eval(), progress.step)  # runs:/<id>/model, on any machine
        # what the run cost; this process's share only when it was resumed
        self.clock["wall_seconds"] = time.perf_counter() - self.t_start
        self.clock["tracking_seconds"] = run.seconds
        n_params = sum(p.numel() for p in model.parameters())
        run.metrics(progress.step, cost_metrics(progress, n_params, self.env.device) | self.clock)
        return results

    def fail(self, run: RunLogger, e: Exception, prefix: str = "") -> RunOutcome:
        log.error("%s failed:\n%s", self.spec.run_name, traceback.format_exc())
        reason = (prefix + f"{type(e).__name__}: {e}".splitlines()[0])[:500]
        run.tags({"failure_reason": reason})
        run.text("traceback.txt", traceback.format_exc())
        run.finish("FAILED")
        return self.outcome(run, "FAILED", reason)


def load_trainer_state(trainer: Trainer, state: dict, path: Path) -> None:
    """``trainer.load_state_dict(state)`` for a checkpoint whose structure ``check_run_state``
    checked; ``CheckpointError``, naming ``path``, when the state does not fit this run: progress
    outside its budget, tensors of other shapes, optimiser settings other than its config's."""
    progress, budget = state["progress"], trainer.budget
    step, images = progress["step"], progress["images"]
    total = 0 if trainer.model.step_kind == "none" else total_steps(budget, len(trainer.data.train_x))
    # an images budget takes more steps than images / batch size where epochs end in short
    # batches: the images bound below is the one that holds there
    if step > total and (budget.kind != "images" or trainer.model.step_kind == "none"):
        raise CheckpointError(f"{path}: step {step} is beyond the budget's {total} steps")
    # every step trains on one batch: between one image and a batch of them
    if not step <= images <= step * budget.batch_size:
        raise CheckpointError(f"{path}: {images} images in {step} steps of batches of {budget.batch_size}")
    if budget.kind == "images" and images > budget.images + 1:  # one past it at most (``Trainer.run``)
        raise CheckpointError(f"{path}: {images} images is beyond the budget's {budget.images}")
    optimizers = [o for o in vars(trainer.step_fn).values() if isinstance(o, torch.optim.Optimizer)]
    settings = [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in optimizers]
    try:
        trainer.load_state_dict(state)
        for o, groups in zip(optimizers, settings):
            _check_optimizer(o, groups, step, path)
        # a run whose weights or moments went NaN fails before its next checkpoint: such a file is
        # damaged or forged, and would fail the resumed run (or score it) on every retry. Buffers
        # are not checked: a model may hold an infinite one (a mask) on purpose
        tensors = {**dict(trainer.model.named_parameters()), **{
            f"optimiser {i}'s {name} of parameter {j}": t
            for i, o in enumerate(optimizers)
            for j, st in enumerate(o.state.values())
            for name, t in st.items()
        }}  # fmt: skip
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: {name} holds values that are not finite")
    except CheckpointError:
        raise
    except Exception as e:  # missing keys, tensors of other shapes, parameter groups of other sizes
        why = " ".join(str(e).split())[:300]  # load_state_dict's first line names no tensor
        raise CheckpointError(f"{path}: does not fit the model ({type(e).__name__}: {why})") from None


def _check_optimizer(o: torch.optim.Optimizer, settings: list[dict], step: int, path: Path) -> None:
    """An optimiser as loaded from a checkpoint at ``step``: its settings as they were built
    (``settings``: lr, betas, decay are the config's, which the config hash covers), its state the
    shape of its parameters, its step count no more than the trainer's."""
    for group, before in zip(o.param_groups, settings, strict=True):
        changed = [k for k, v in before.items() if not _same(group.get(k), v)]
        if changed:
            raise CheckpointError(f"{path}: optimiser settings {', '.join(changed)} are not the config's")
        for p in group["params"]:  # Adam's moments: the shape of their parameter
            for name, t in o.state.get(p, {}).items():
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape != p.shape:
                    raise CheckpointError(
                        f"{path}: optimiser state {name} of shape {tuple(t.shape)} for a parameter "
                        f"of shape {tuple(p.shape)}"
                    )
                if name == "step" and not 0 <= float(t) <= step:  # one optimiser step a step at most
                    raise CheckpointError(f"{path}: optimiser step {float(t)} at step {step}")


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # a value that does not compare (a forged one): not the config's
        return False


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


def log_dataset(run: RunLogger, data: ImageData) -> None:
    """The run's dataset as an MLflow input: name, content digest and split sizes."""
    profile = {
        "train": int(data.train_x.shape[0]),
        "test": int(data.test_x.shape[0]),
        "image_shape": list(data.image_shape),
        "num_classes": int(data.num_classes),
    }
    run.dataset(data.name, data.checksum, data.source, profile)


def _model_spec(spec: RunSpec, data: ImageData) -> dict:
    """What rebuilds the model: its name, parameters, image shape (and where a plugin is found)."""
    out = {"model": spec.model, "params": spec.params, "image_shape": list(data.image_shape)}
    if spec.entry.plugin is not None:
        out["plugin_paths"] = spec.suite.plugin_paths
    return out


def log_artifacts(run: RunLogger, model, data: ImageData, spec: RunSpec, device: torch.device) -> None:
    """Sample grid, reconstruction grid (encoder families), state_dict and the spec to rebuild it."""
    if model.can_sample:
        run.image("samples.png", sample_grid(model, spec.seed, device))
    if model.reconstructs:
        run.image("reconstructions.png", reconstruction_grid(model, data, device))
    run.torch_state("model/state_dict.pt", model.state_dict())
    run.text(
        "model/spec.json",
        json.dumps(_model_spec(spec, data)),
    )
