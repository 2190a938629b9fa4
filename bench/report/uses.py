"""What the comparison is for: the four uses of a learned code (compression, feature learning,
denoising, generation) plus what training cost, each with its metrics, and the answer per use.

``USES`` is the one place that says which metric serves which use; the report's answer section,
its per-use tables and its figures all read it. A metric no use names is shown under "other".
An ``Answer`` is computed from the summary alone: the best model on the use's headline metric
(its first metric with values), the runner-up, whether they differ over seeds (Welch), the best
of each family, and the real-data reference where there is one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from bench.report.stats import welch

if TYPE_CHECKING:
    from bench.report.summary import Summary

ALPHA = 0.05
FAMILIES = ("ae", "vae", "gan")
FAMILY_NAMES = {"ae": "AE", "vae": "VAE", "gan": "GAN"}


@dataclass(frozen=True)
class Use:
    key: str  # anchor and file-name part
    title: str
    question: str  # what the use's numbers answer, in words
    metrics: tuple[str, ...]  # in order of preference: the first one with values is the headline
    rate: tuple[str, ...] = ()  # shown beside the headline (the rate of a rate-distortion answer)


_GENERATION_BASES = ("fid", "fid_domain", "kid", "kid_domain", "precision", "precision_domain", "recall")
_GENERATION_BASES += ("recall_domain", "is", "is_domain", "modes_covered")

USES: tuple[Use, ...] = (
    Use(
        "compression",
        "Compression",
        "rate and distortion: how well the code reconstructs its input, and how small it is",
        ("recon_mse", "psnr", "ssim", "compression_ratio", "bpp", "rate_kl_bits"),
        rate=("compression_ratio", "bpp"),
    ),
    Use(
        "features",
        "Feature learning",
        "how much of the class the frozen code carries (linear probe, k nearest neighbours)",
        ("probe_acc", "knn_acc"),
    ),
    Use("denoising", "Denoising", "how well a noisy input is restored", ("denoise_psnr",)),
    Use(
        "generation",
        "Generation",
        "how close samples are to real images (the real-data row is the floor or ceiling a model can reach)",
        # the headline: Inception FID, then the domain classifier's; sampler variants after the defaults
        _GENERATION_BASES
        + tuple(f"{b}_{v}" for v in ("gmm", "rec") for b in _GENERATION_BASES)
        + ("nll_bpd", "nll_nats"),
    ),
)
COST = Use(
    "cost",
    "Cost",
    "what training took under the shared budget",
    ("train_seconds", "eval_seconds", "images_per_s", "param_count", "peak_memory_mb", "budget_steps",
     "budget_images"),
)  # fmt: skip
# each metric's share of the evaluation time (its columns are the runs' ``eval_seconds.<metric>``)
EVAL_COST = Use(
    "eval_cost",
    "Evaluation time",
    "what each metric took to evaluate, on the machine that ran it (seconds)",
    (),
)
# direction of the cost columns (the metrics' own comes from the registry); none: not ranked
COST_HIGHER = {
    "train_seconds": False,
    "eval_seconds": False,
    "images_per_s": True,
    "param_count": False,
    "peak_memory_mb": False,
}
OTHER = Use("other", "Other metrics", "metrics no use names", ())


def use_of(metric: str) -> Use:
    for u in (*USES, COST):
        if metric in u.metrics:
            return u
    return OTHER


def metrics_by_use(s: Summary) -> list[tuple[Use, list[str]]]:
    """Each use with the summary's metrics that serve it, in the use's order; uses without metrics
    left out; cost last, after any metric no use names."""
    present = s.metrics + s.costs
    out = [(u, [m for m in u.metrics if m in present]) for u in USES]
    other = [m for m in s.metrics if use_of(m) is OTHER]
    if other:
        out.append((OTHER, other))
    out.append((COST, [c for c in COST.metrics if c in s.costs]))
    out.append((EVAL_COST, [c for c in s.costs if c.startswith("eval_seconds.")]))
    return [(u, ms) for u, ms in out if ms]


def higher_is_better(metric: str) -> bool | None:
    from bench.metrics import METRICS

    if metric in METRICS:
        return METRICS.get(metric).higher_is_better
    if metric.startswith("eval_seconds."):
        return False
    return COST_HIGHER.get(metric)


@dataclass(frozen=True)
class Ranked:
    label: str
    family: str
    mean: float


@dataclass(frozen=True)
class Answer:
    """The answer of one use in one suite, on its headline metric."""

    suite: str
    use: Use
    metric: str
    higher: bool
    ranking: list[Ranked]  # best first
    p: float = math.nan  # Welch, best against runner-up
    family_best: dict[str, Ranked] = field(default_factory=dict)
    reference: float = math.nan
    rates: dict[str, float] = field(default_factory=dict)  # rate metric -> the best model's mean
    group: str = ""  # for a metric ranked within groups (``Metric.ranked_within``): the group, in words

    @property
    def best(self) -> Ranked:
        return self.ranking[0]

    @property
    def runner_up(self) -> Ranked | None:
        return self.ranking[1] if len(self.ranking) > 1 else None

    @property
    def tie(self) -> bool:
        return self.runner_up is not None and self.runner_up.mean == self.best.mean

    def text(self, with_suite: bool = False, escape: Callable[[str], str] = str) -> str:
        """One line, in words and numbers; ``escape`` is applied to the labels and the suite name
        (which come from suite files), e.g. the markdown escaping of report.md."""
        from bench.report.summary import fmt_num

        arrow = "↑" if self.higher else "↓"
        head = f"{self.use.title.lower()} ({self.metric} {arrow}{', ' + self.group if self.group else ''})"
        if with_suite:
            head = f"{escape(self.suite)}: {head}"
        b, r = (
            replace(x, label=escape(x.label)) if x is not None else None for x in (self.best, self.runner_up)
        )
        best_word = ("lowest" if not self.higher else "highest") if self.use is COST else "best"
        if self.tie:
            parts = [f"{b.label} and {r.label} tie at {fmt_num(b.mean)}"]
        else:
            parts = [f"{b.label} ({FAMILY_NAMES.get(b.family, b.family)}) {fmt_num(b.mean)} {best_word}"]
        parts[0] += "".join(f" (at {k} {fmt_num(v)})" for k, v in self.rates.items())
        if r is not None and not self.tie:
            parts.append(f"runner-up {r.label} ({FAMILY_NAMES.get(r.family, r.family)}) {fmt_num(r.mean)}")
        shown = {b.label} | ({r.label} if r is not None else set())
        parts += [
            f"best {FAMILY_NAMES[f]} {escape(self.family_best[f].label)} {fmt_num(self.family_best[f].mean)}"
            for f in FAMILIES
            if f in self.family_best and escape(self.family_best[f].label) not in shown
        ]
        if r is not None and not self.tie:
            parts.append(f"{b.label} vs {r.label} {self.verdict()}")
        if math.isfinite(self.reference):
            parts.append(f"real data {fmt_num(self.reference)}")
        return f"{head}: " + "; ".join(parts)

    def verdict(self) -> str:
        if not math.isfinite(self.p):
            return "not testable (needs two or more seeds with some spread on each side)"
        word = "significant" if self.p < ALPHA else "not significant"
        return f"{word} (Welch p = {self.p:.2g})"


def _headline(s: Summary, suite: str, use: Use) -> str | None:
    sel = s.long[(s.long.suite == suite) & s.long["mean"].notna()]
    have = set(sel.metric)
    return next((m for m in use.metrics if m in have and higher_is_better(m) is not None), None)


def _rows(s: Summary, suite: str, metric: str):
    return s.long[(s.long.suite == suite) & (s.long.metric == metric) & s.long["mean"].notna()]


def _ranked_groups(s: Summary, suite: str, metric: str) -> list[str]:
    """The groups a metric's values are ranked within in ``suite`` (one, "", for most metrics)."""
    if "group" not in s.long:
        return [""]
    return list(dict.fromkeys(_rows(s, suite, metric).group.fillna(""))) or [""]


def answer(s: Summary, suite: str, use: Use, group: str | None = None) -> Answer | None:
    """The answer of ``use`` in ``suite``; None when no model has a value for any of its metrics.
    ``group``: only the models of that group of a metric ranked within groups (a likelihood family)."""
    from bench.metrics import METRICS

    m = _headline(s, suite, use)
    if m is None:
        return None
    higher = bool(higher_is_better(m))
    rows = _rows(s, suite, m)
    in_words = ""
    if group is not None and "group" in rows:
        rows = rows[rows.group.fillna("") == group]
        within = METRICS.get(m).ranked_within if m in METRICS else None
        in_words = f"{group} {within}" if group and within else ""
    if rows.empty:
        return None
    rows = rows.sort_values("mean", ascending=not higher, kind="stable")
    ranking = [Ranked(r.label, r.family, float(r["mean"])) for _, r in rows.iterrows()]
    p = math.nan
    if len(ranking) > 1:
        p = welch(
            s.seed_values(suite, ranking[0].label, m), s.seed_values(suite, ranking[1].label, m)
        ).p
    family_best: dict[str, Ranked] = {}
    for r in ranking:
        family_best.setdefault(r.family, r)
    rates: dict[str, float] = {}
    for rate in use.rate:
        st = s.stat(suite, ranking[0].label, rate)
        if rate != m and st is not None and math.isfinite(st["mean"]):
            rates[rate] = float(st["mean"])
    reference = s.reference_value(suite, m)
    return Answer(suite, use, m, higher, ranking, p, family_best, reference, rates, in_words)


def answers(s: Summary) -> list[Answer]:
    """Every use's answer in every suite (uses in ``USES`` order, then cost)."""
    if s.empty:
        return []
    out = []
    for suite in dict.fromkeys(s.models.suite):
        for use in (*USES, COST):
            m = _headline(s, suite, use)
            groups = _ranked_groups(s, suite, m) if m is not None else [""]
            # values of different groups (likelihood families) are never ranked together: one answer each
            for g in groups if len(groups) > 1 else [None]:
                a = answer(s, suite, use, g)
                if a is not None:
                    out.append(a)
    return out


def answer_notes() -> list[str]:
    return [
        "Each line: the use, its headline metric (the first of the use's metrics these runs have; ↑ higher "
        "is better, ↓ lower), the best model's mean over seeds, the runner-up, the best model of each other "
        "family, and whether best and runner-up differ by Welch's two-sided t-test over seeds "
        f"(p < {ALPHA:g}; not corrected for multiple comparisons).",
    ]
