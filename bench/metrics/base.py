"""The metric interface and the evaluation context shared by every metric of one evaluation.

A metric is a function of an ``EvalContext`` registered with its direction (higher is better),
the families it applies to, and a static ``check`` run at ``bench validate`` time. The context
computes what metrics need (test reconstructions, samples, codes) once, lazily, in large
batches under ``torch.inference_mode``: adding a metric never touches the training loop.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bench import numerics
from bench.data import ImageData, to_float
from bench.metrics.codes import encoded, pinned, train_codes
from bench.metrics.coding import Coded, code_test_set
from bench.metrics.pixels import unit_images
from bench.models.base import GenerativeModel
from bench.registry import Registry

if TYPE_CHECKING:
    from bench.config import EvalConfig, Suite

ALL_FAMILIES = ("ae", "vae", "gan")
ENCODER_FAMILIES = ("ae", "vae")  # the families with an encoder: codes and reconstructions
# families whose test images are reconstructed: encoder models and classical codecs
RECONSTRUCTING_FAMILIES = ("ae", "vae", "codec")


@dataclass(frozen=True)
class Result:
    """A metric value with how it was computed; ``extra`` holds companion values (e.g. a KL)."""

    value: float
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricFailure:
    """A metric that raised an error during an evaluation: one line of reason, and the traceback."""

    reason: str
    traceback: str


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[EvalContext], Result | float | None]
    higher_is_better: bool
    families: tuple[str, ...]
    description: str
    check: Callable[[Suite], list[str]] = lambda suite: []
    # what the loaded data's splits cannot give (sizes, classes): run before any training
    check_data: Callable[[EvalConfig, ImageData], list[str]] = lambda cfg, data: []
    needs: frozenset[str] = frozenset()  # model capabilities beyond the family (e.g. "likelihood")
    needs_labels: bool = False  # n/a on a dataset without labels (an image folder without classes)
    # the model methods the metric calls: ``bench validate`` checks a plugin model has them
    uses: frozenset[str] = frozenset()
    # generation metrics only: what is computed, from which features, on which images
    base: str | None = None  # e.g. "fid"; precision and recall share one computation
    extractor: str | None = None  # "inception" | "domain" (bench.metrics.features.EXTRACTORS)
    sampler: str | None = None  # "prior" | "gmm" | "rec" (bench.metrics.samplers.SAMPLERS)
    headline: bool = False  # drawn in the report's headline generation figure
    # a run tag's column that splits the comparison: values of different groups never share a
    # "best" (the likelihood metrics: one per decoder distribution)
    ranked_within: str | None = None

    @property
    def is_generation(self) -> bool:
        return self.extractor is not None

    def applies_to(self, family: str, capabilities: Iterable[str] | None = None) -> bool:
        """Whether the metric is defined for a model of ``family`` offering ``capabilities``
        (None: judge by the family alone)."""
        if family not in self.families:
            return False
        return capabilities is None or self.needs <= set(capabilities)

    def applies_to_model(self, model: GenerativeModel | type[GenerativeModel]) -> bool:
        return self.applies_to(model.family, getattr(model, "capabilities", frozenset()))

    @property
    def scope(self) -> str:
        """Who the metric is for, in words: 'ae/vae models', 'vae models with likelihood'."""
        with_ = f" with {', '.join(sorted(self.needs))}" if self.needs else ""
        return f"{'/'.join(self.families)} models{with_}"


METRICS: Registry[Metric] = Registry("metric")


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    families: tuple[str, ...] = ALL_FAMILIES,
    description: str,
    check: Callable[[Suite], list[str]] | None = None,
    check_data: Callable[[EvalConfig, ImageData], list[str]] | None = None,
    needs: tuple[str, ...] = (),
    needs_labels: bool = False,
    uses: tuple[str, ...] | None = None,
    ranked_within: str | None = None,
    **generation: Any,
) -> Callable[[Callable[[EvalContext], Result | float]], Callable[[EvalContext], Result | float]]:
    """Decorator registering a metric function under ``name``. ``uses``: the model methods it calls
    (default: ``sample`` for a metric of every family, ``encode`` for an encoder-only metric).
    ``check``: static checks of the suite (``bench validate``); ``check_data``: checks against the
    loaded data's splits (``data_problems``: before any training or evaluation). ``generation``
    holds the fields of a generation metric (``base``, ``extractor``, ``sampler``, ``headline``)."""
    if uses is None:
        uses = ("sample",) if "gan" in families else ("encode",)

    def deco(fn):
        METRICS.add(
            name,
            Metric(
                name,
                fn,
                higher_is_better,
                families,
                description,
                check or (lambda s: []),
                check_data or (lambda cfg, data: []),
                frozenset(needs),
                needs_labels=needs_labels,
                uses=frozenset(uses) | frozenset(needs),
                ranked_within=ranked_within,
                **generation,
            ),
        )
        return fn

    return deco


class EvalContext:
    """What metrics of one evaluation share: the model in eval mode, the data, cached tensors."""

    def __init__(
        self, model: GenerativeModel, data: ImageData, cfg: EvalConfig, seed: int, device: torch.device
    ) -> None:
        self.model = model
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.device = device
        self.memo: dict[str, Any] = {}  # what metric modules share within this evaluation

    @property
    def family(self) -> str:
        return self.model.family

    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        bs = self.cfg.batch_size
        return torch.cat([fn(to_float(x[i : i + bs]).to(self.device)) for i in range(0, len(x), bs)])

    @functools.cached_property
    def test_uint8(self) -> torch.Tensor:
        """The test images used for reconstruction metrics: the first ``eval.n_test`` (default all)."""
        return self.data.test_x[: self.cfg.n_test] if self.cfg.n_test else self.data.test_x

    @functools.cached_property
    def test_images(self) -> torch.Tensor:
        return self._batched(lambda x: x, self.test_uint8)  # (N, C, H, W) in [0, 1]

    @functools.cached_property
    def coded(self) -> Coded | None:
        """The test images through the model's real bitstreams (None: the model stores no rate)."""
        return code_test_set(
            self.model, self.data, self.test_uint8, self.cfg.code_step, self.cfg.batch_size, self.device
        )

    @property
    def _test_codes(self) -> torch.Tensor:
        """The encoder's output for the whole test split, as it returns it (``codes.encoded``: once
        per trained state, shared with the bitstreams)."""
        return encoded(self.model, self.data, "test", self.cfg.batch_size).raw

    @functools.cached_property
    def reconstructions(self) -> torch.Tensor:
        """Test reconstructions; decoded from the bitstreams wherever the model has a rate. A model
        that reconstructs as ``decode(encode(x))`` decodes the test codes the probes use, so the
        test split is encoded once (the values are ``reconstruct``'s where the codes were computed
        in batches of ``eval.batch_size``; in other batches, up to the rounding of batched
        products)."""
        if self.coded is not None:
            return self.coded.decoded
        n, bs = len(self.test_uint8), self.cfg.batch_size
        with torch.inference_mode():
            own = getattr(type(self.model), "reconstruct", None)
            if n == len(self.data.test_x) and own is GenerativeModel.reconstruct:
                z = self._test_codes[:n]
                rec = torch.cat([self.model.decode(z[i : i + bs]) for i in range(0, n, bs)])
                return unit_images(rec, f"{type(self.model).__name__}.decode")
            rec = self._batched(self.model.reconstruct, self.test_uint8)
            return unit_images(rec, f"{type(self.model).__name__}.reconstruct")

    def codes(self, split: str) -> torch.Tensor:
        """Deterministic codes (N, d) of a whole split (``codes.encoded``: once per trained state,
        shared with the post-training latent fits and the bitstreams)."""
        if split == "train":
            return train_codes(self.model, self.data, self.cfg.batch_size)
        return self._test_codes.flatten(1)

    @property
    def test_provenance(self) -> dict[str, Any]:
        """Which images a test-split metric scores."""
        return {"split": "test", "n": len(self.test_uint8), "pixel_range": "[0, 1]"}

    @property
    def recon_provenance(self) -> dict[str, Any]:
        """``test_provenance``, and for a model with a rate, that the reconstructions were decoded
        from the test images' bitstreams (``coded``) and what those store."""
        prov = self.test_provenance
        if self.coded is not None:
            kept = ("coder", "symbols", "code_step")
            stored = {k: v for k, v in self.coded.provenance.items() if k in kept}
            prov.update({"decoded_from": "the test images' bitstreams (those bpp counts)", **stored})
        return prov


def applies(metric: Metric, model: GenerativeModel | type[GenerativeModel], data: ImageData) -> bool:
    """Whether ``metric`` is computed for ``model`` on ``data``: its family and capabilities, and
    class labels for a metric that needs them (n/a otherwise, never 0)."""
    return metric.applies_to_model(model) and (data.has_labels or not metric.needs_labels)


def data_problems(
    cfg: EvalConfig, data: ImageData, models: Iterable[GenerativeModel | type[GenerativeModel]] | None = None
) -> list[tuple[int, str]]:
    """(index in ``cfg.metrics``, why) for each metric the data's splits cannot give as asked (a
    k-NN classifier with more neighbours than training images, a reference set of one image): the
    metrics that apply to any of ``models`` (None: every metric). Run before anything is trained or
    computed, so a request that would fail at evaluation fails at once, naming the field."""
    models = None if models is None else list(models)
    out = []
    for i, name in enumerate(cfg.metrics):
        if name not in METRICS:
            continue
        metric = METRICS.get(name)
        if models is not None and not any(applies(metric, m, data) for m in models):
            continue
        if metric.needs_labels and not data.has_labels:
            continue
        out += [(i, problem) for problem in metric.check_data(cfg, data)]
    return out


def evaluate(
    model: GenerativeModel,
    data: ImageData,
    cfg: EvalConfig,
    seed: int,
    device: torch.device,
    seconds: dict[str, float] | None = None,
    failed: dict[str, MetricFailure] | None = None,
) -> dict[str, Result]:
    """Compute every requested metric that applies to the model's family.

    Metrics that do not apply (wrong family, a capability the model lacks, labels the data lacks)
    are absent from the result (reported as n/a, never as 0). ``seconds``, when given, receives
    each computed metric's wall time, in the order of ``cfg.metrics``: what metrics share (codes,
    samples, features) is charged to the first that needs it. ``failed``, when given, receives the
    reason and traceback of each metric that raised an error, and the others are still computed
    (a failure loses no finished metric); without it the first error is raised.
    """
    was_training = model.training
    model.eval()
    ctx = EvalContext(model, data, cfg, seed, device)
    out: dict[str, Result] = {}
    try:
        with numerics.evaluation(model, cfg.precision, device), pinned():
            for name in cfg.metrics:
                metric = METRICS.get(name)
                if not applies(metric, model, data):
                    continue
                t0 = time.perf_counter()
                try:
                    r = metric.fn(ctx)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                except Exception as e:
                    if failed is None:
                        raise
                    # text only: the traceback's frames would keep the metric's tensors alive
                    failed[name] = MetricFailure(failure_reason(e), "".join(traceback.format_exception(e)))
                    continue
                if r is None:  # not defined for this model as configured (e.g. float codes, no code_step)
                    continue
                out[name] = r if isinstance(r, Result) else Result(float(r))
                if seconds is not None:
                    seconds[name] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return out


def failure_reason(e: BaseException) -> str:
    """One line for a metric's error, as runs tag it."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]
