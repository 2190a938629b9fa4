"""The report's figures (matplotlib, PNG), drawn from what ``bench.report`` read from the store.

Each figure is drawn for whatever metrics the runs have; a figure whose inputs are missing is
skipped with a note that says why (the report shows the note instead of an empty plot).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from bench.files import atomic_write

if TYPE_CHECKING:
    from bench.report.summary import GridImage, Report, Summary

DPI = 110
log = logging.getLogger("bench")


@dataclass(frozen=True)
class FigureFile:
    name: str  # file name in the report folder
    title: str
    caption: str


class Skip(Exception):
    """A figure that cannot be drawn from these runs; the message says why."""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.facecolor": "white",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "legend.frameon": False,
            "font.size": 9,
            # labels come from suite files: drawn as plain text, never as mathtext or LaTeX
            "text.parse_math": False,
            "text.usetex": False,
        }
    )
    return plt


def _colors(summary: Summary) -> dict[str, str]:
    """One colour per row, the same in every figure (table order)."""
    keys = [summary.key(r) for _, r in summary.models.iterrows()]
    return {k: f"C{i % 10}" for i, k in enumerate(keys)}


def _arrow(metric: str) -> str:
    from bench.metrics import METRICS

    return ("↑" if METRICS.get(metric).higher_is_better else "↓") if metric in METRICS else ""


def _grid(plt, n: int, ncols: int = 3, w: float = 4.2, h: float = 3.0):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> None:
    """The figure as a PNG, written whole or not at all (a report killed mid-write leaves the last)."""
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)


def _band(ax, hist: pd.DataFrame, color: str, label: str | None) -> None:
    """Mean over seeds at each step, with the min-max range over seeds as a band."""
    g = hist.groupby("step")["value"].agg(["mean", "min", "max", "count"]).sort_index()
    ax.plot(g.index, g["mean"], color=color, label=label, marker="o" if len(g) < 15 else None, ms=3, lw=1.5)
    if (g["count"] > 1).any():
        ax.fill_between(g.index, g["min"], g["max"], color=color, alpha=0.18, lw=0)


def metric_curves(rep: Report, path: Path) -> FigureFile:
    s, hist = rep.summary, rep.history
    metrics = [m for m in s.metrics if eval_points(hist, m) > 1]
    if not metrics:
        raise Skip(
            "metrics against training progress: every metric was evaluated at one point only "
            "(the end of the budget); the dot plots show them"
        )
    plt = _plt()
    colors = _colors(s)
    fig, axes = _grid(plt, len(metrics))
    for ax, m in zip(axes, metrics):
        for _, row in s.models.iterrows():
            h = hist[(hist.suite == row.suite) & (hist.label == row.label) & (hist.key == m)]
            if len(h):
                _band(ax, h, colors[s.key(row)], s.key(row))
        ax.set_title(f"{m} {_arrow(m)}")
        ax.set_xlabel("training step")
    handles = {}
    for ax in axes:  # one legend for the figure: a metric's panel may lack the models it does not apply to
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [k for k in colors if k in handles]
    fig.legend([handles[k] for k in order], order, loc="outside upper center", ncols=min(len(order), 6))
    _save(fig, path)
    return FigureFile(
        path.name,
        "Metrics against training progress",
        "Each metric at every evaluation (every `eval.every` steps, and at the end of the budget): "
        "the line is the mean over seeds, the band the range (min to max) over seeds.",
    )


def eval_points(hist: pd.DataFrame, metric: str) -> int:
    """How many distinct steps a metric was evaluated at (the most over runs)."""
    if hist.empty:
        return 0
    h = hist[hist.key == metric]
    return int(h.groupby("run_id").step.nunique().max()) if len(h) else 0


FAMILY_COLORS = {"ae": "#1f77b4", "vae": "#ff7f0e", "gan": "#2ca02c"}


def metric_dots(rep: Report, path: Path) -> FigureFile:
    """Per metric evaluated once (at the end of the budget): one row per model, the mean with its
    95% interval, coloured by family, and the real-data reference as a vertical line."""
    from bench.report.uses import metrics_by_use

    s, hist = rep.summary, rep.history
    if s.empty:
        raise Skip("dot plots: no runs")
    ordered = [m for _, ms in metrics_by_use(s) for m in ms if m in s.metrics]
    metrics = [
        m for m in ordered if eval_points(hist, m) <= 1 and s.long["mean"][s.long.metric == m].notna().any()
    ]
    if not metrics:
        raise Skip("dot plots: every metric has several evaluation points (the curves show them)")
    plt = _plt()
    n_rows = len(s.models)
    fig, axes = _grid(plt, len(metrics), ncols=3, w=4.2, h=0.9 + 0.32 * n_rows)
    names = [s.key(r) for _, r in s.models.iterrows()]
    for ax, m in zip(axes, metrics):
        _dot_panel(ax, s, m, names)
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=f)
        for f, c in FAMILY_COLORS.items()
        if (s.models.family == f).any()
    ]
    if any(math.isfinite(s.reference_value(x, m)) for x in set(s.models.suite) for m in metrics):
        handles.append(plt.Line2D([], [], color="0.3", ls=":", label="real data"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    _save(fig, path)
    return FigureFile(
        path.name,
        "Metrics at the end of the budget",
        "One row per model: the mean over seeds with its 95% interval (Student t), coloured by family; "
        "the dotted line is the real-data reference where there is one. Models a metric does not apply "
        "to have no dot.",
    )


def _dot_panel(ax, s: Summary, m: str, names: list[str]) -> None:
    ys = list(range(len(names)))[::-1]  # the first model on top
    for y, (_, r) in zip(ys, s.models.iterrows()):
        st = s.stat(r.suite, r.label, m)
        if st is None or not math.isfinite(st["mean"]):
            continue
        err = st["ci95"] if math.isfinite(st["ci95"]) else None
        color = FAMILY_COLORS.get(r.family, "0.4")
        ax.errorbar(st["mean"], y, xerr=err, fmt="o", color=color, ms=5, capsize=3)
    for suite in dict.fromkeys(s.models.suite):
        ref = s.reference_value(suite, m)
        if math.isfinite(ref):
            ax.axvline(ref, ls=":", color="0.3", lw=1.2)
    ax.set_yticks(ys, names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_title(f"{m} {_arrow(m)}")
    ax.grid(axis="y", alpha=0)


def loss_curves(rep: Report, path: Path) -> FigureFile:
    s, hist = rep.summary, rep.history
    losses = hist[hist.key.str.startswith("train/")] if not hist.empty else hist
    has = [((losses.suite == r.suite) & (losses.label == r.label)).any() for _, r in s.models.iterrows()]
    rows = [r for (_, r), h in zip(s.models.iterrows(), has) if h]
    if not rows:
        raise Skip("loss curves: no training losses in the store")
    plt = _plt()
    fig, axes = _grid(plt, len(rows), ncols=3, w=4.2, h=2.8)
    for ax, row in zip(axes, rows):
        mine = losses[(losses.suite == row.suite) & (losses.label == row.label)]
        for i, key in enumerate(dict.fromkeys(mine.key)):
            _band(ax, mine[mine.key == key], f"C{i % 10}", key.removeprefix("train/"))
        ax.set_title(f"{s.key(row)} ({row.family})")
        ax.set_xlabel("training step")
        ax.legend(loc="best")
    _save(fig, path)
    return FigureFile(
        path.name,
        "Training losses",
        "Per model: each training loss (mean over its log interval), mean over seeds with the "
        "min-max band over seeds.",
    )


def _points(s: Summary, xcol: str, ycol: str) -> pd.DataFrame:
    """Models with a mean of both: suite, label, x, y, xe, ye (95% half-widths, NaN when none)."""
    rows = []
    for _, r in s.models.iterrows():
        x, y = s.stat(r.suite, r.label, xcol), s.stat(r.suite, r.label, ycol)
        if x is None or y is None or not (math.isfinite(x["mean"]) and math.isfinite(y["mean"])):
            continue
        rows.append(
            {"suite": r.suite, "label": r.label, "family": r.family, "x": x["mean"], "y": y["mean"],
             "xe": x["ci95"], "ye": y["ci95"]}  # fmt: skip
        )
    return pd.DataFrame(rows, columns=["suite", "label", "family", "x", "y", "xe", "ye"])


def _scatter(ax, s: Summary, pts: pd.DataFrame, colors: dict[str, str]) -> None:
    for _, r in pts.iterrows():
        ax.errorbar(
            r.x,
            r.y,
            xerr=r.xe if math.isfinite(r.xe) else None,
            yerr=r.ye if math.isfinite(r.ye) else None,
            fmt="o",
            color=colors[s.key(r)],
            ms=6,
            capsize=3,
            label=s.key(r),
        )
        ax.annotate(s.key(r), (r.x, r.y), xytext=(6, 4), textcoords="offset points", fontsize=8)


def _log_if_wide(ax, values: pd.Series, axis: str) -> None:
    v = values[values > 0]
    if len(v) > 1 and v.max() / v.min() > 20:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # plain tick labels: matplotlib's log labels are mathtext, which the figures never parse
        which = ax.xaxis if axis == "x" else ax.yaxis
        which.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
        which.set_minor_formatter(NullFormatter())


def jpeg_comparison(pts: pd.DataFrame, ycol: str = "psnr") -> dict[str, list[str]] | None:
    """The non-JPEG rows of ``pts`` (labels) by how they compare with JPEG at equal bpp; None
    without a JPEG row. JPEG's ``ycol`` at a row's bpp is interpolated linearly between its
    measured qualities. ``beat``: higher than JPEG at that bpp (beyond JPEG's range: higher than its
    nearest end point, which then uses more bits); ``not``: not higher; ``below``: fewer bits than
    JPEG's smallest files and lower quality, a rate JPEG does not reach."""
    import numpy as np

    jpeg = pts[pts.model == "jpeg"].sort_values("bpp_mean")
    if jpeg.empty:
        return None
    out: dict[str, list[str]] = {"beat": [], "not": [], "below": []}
    low_bpp = jpeg["bpp_mean"].iloc[0]
    for _, r in pts[pts.model != "jpeg"].iterrows():
        ref = float(np.interp(r["bpp_mean"], jpeg["bpp_mean"], jpeg[f"{ycol}_mean"]))
        if r[f"{ycol}_mean"] > ref:
            out["beat"].append(r.label)
        else:
            out["below" if r["bpp_mean"] < low_bpp else "not"].append(r.label)
    return out


def _jpeg_sentence(pts: pd.DataFrame) -> str:
    got = jpeg_comparison(pts)
    if got is None:
        return "No JPEG rows, so no comparison with JPEG."
    jpeg = pts[pts.model == "jpeg"].sort_values("bpp_mean").iloc[0]
    parts = [
        f"{', '.join(got['beat']) or 'no model'} beat{'s' if len(got['beat']) == 1 else ''} JPEG at equal "
        "bpp (higher PSNR than JPEG interpolated between its qualities)"
    ]
    if got["not"]:
        parts.append(f"{', '.join(got['not'])} do{'es' if len(got['not']) == 1 else ''} not")
    if got["below"]:
        parts.append(
            f"{', '.join(got['below'])} code{'s' if len(got['below']) == 1 else ''} below JPEG's smallest "
            f"files ({jpeg.label}, {jpeg['bpp_mean']:.3g} bpp) at lower PSNR, a rate JPEG does not reach"
        )
    return "; ".join(parts) + "."


def _rd_points(s: Summary) -> pd.DataFrame:
    """Models with a measured bpp and psnr: suite, label, model, family and the means of bpp,
    psnr and ssim (NaN where absent); a lossless row has an infinite psnr."""
    rows = []
    for _, r in s.models.iterrows():
        st = {m: s.stat(r.suite, r.label, m) for m in ("bpp", "psnr", "ssim")}
        mean = {m: (float(v["mean"]) if v is not None else math.nan) for m, v in st.items()}
        if not (math.isfinite(mean["bpp"]) and not math.isnan(mean["psnr"])):
            continue
        rows.append({"suite": r.suite, "label": r.label, "model": r.model, "family": r.family}
                    | {f"{m}_mean": v for m, v in mean.items()})  # fmt: skip
    cols = ["suite", "label", "model", "family", "bpp_mean", "psnr_mean", "ssim_mean"]
    return pd.DataFrame(rows, columns=cols)


def rate_distortion(rep: Report, path: Path) -> FigureFile:
    s = rep.summary
    if "bpp" not in s.metrics or "psnr" not in s.metrics:
        raise Skip("rate-distortion: needs both bpp and psnr in the suite's metrics")
    pts = _rd_points(s)
    if pts.empty:
        raise Skip("rate-distortion: no model has both bpp and psnr")
    lossless = pts[~_finite(pts["psnr_mean"])]  # zero error: PSNR is infinite (stored as the largest float)
    pts = pts[_finite(pts["psnr_mean"])]
    if pts.empty:
        raise Skip("rate-distortion: every model with a bpp is lossless (infinite PSNR)")
    ys = ["psnr"] + (["ssim"] if "ssim" in s.metrics and pts["ssim_mean"].notna().any() else [])
    plt = _plt()
    fig, axes = _grid(plt, len(ys), ncols=2, w=5.6, h=4.2)
    colors = _colors(s)
    sentences = []
    for suite, mine in pts.groupby("suite", sort=False):
        prefix = f"{suite}: " if s.multi_suite else ""
        sentences.append(prefix + _jpeg_sentence(mine))
        for ax, y in zip(axes, ys):
            for model, grp in mine[mine[f"{y}_mean"].notna()].groupby("model", sort=False):
                grp = grp.sort_values("bpp_mean")
                color = colors[s.key(grp.iloc[0])]
                name = prefix + (model if len(grp) > 1 else s.key(grp.iloc[0]))
                ax.plot(
                    grp["bpp_mean"],
                    grp[f"{y}_mean"],
                    marker="o",
                    ms=4,
                    color=color,
                    label=name,
                    lw=1.5 if len(grp) > 1 else 0,
                )
                if len(grp) > 1:
                    for _, r in grp.iterrows():
                        ax.annotate(
                            r.label,
                            (r["bpp_mean"], r[f"{y}_mean"]),
                            xytext=(3, 3),
                            textcoords="offset points",
                            fontsize=6,
                            color=color,
                        )
    for ax, y in zip(axes, ys):
        _log_if_wide(ax, pts["bpp_mean"], "x")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("bits per pixel ↓ (actual bitstreams, headers counted)")
        ax.set_ylabel(f"{y} {_arrow(y)}")
        ax.set_title(f"Rate–distortion ({y})")
    axes[0].legend(loc="best")
    _save(fig, path)
    return FigureFile(
        path.name,
        "Rate–distortion",
        "Bits per pixel of the test images' real bitstreams against PSNR"
        + (" and SSIM" if len(ys) > 1 else "")
        + " of the images decoded from them, mean over seeds; a line joins the settings of one model "
        "(quality, lmbda, latent_bits), a lone point is a single setting. "
        + "".join(
            f"{s.key(r)} is lossless (infinite PSNR) at {r['bpp_mean']:.3g} bpp. "
            for _, r in lossless.iterrows()
        )
        + " ".join(sentences),
    )


def _finite(v: pd.Series) -> pd.Series:
    return v.abs() < 1e300  # MLflow stores an infinite value as the largest double


def main_generation_metric(s: Summary) -> str | None:
    """The metric of the quality-against-cost figure: the first headline generation metric
    present (registry order), else the first metric present that applies to GANs, else the first
    sample-quality metric of the generation use present (a suite of autoencoders scored on their
    GMM samples alone: ``fid_gmm``); never a likelihood."""
    from bench.metrics import METRICS
    from bench.report.uses import USES

    present = [m for m in s.metrics if s.long["mean"][s.long.metric == m].notna().any()]
    headline = [m for m in present if METRICS.get(m).headline]
    generation = next(u for u in USES if u.key == "generation").metrics
    return (
        next(iter(headline), None)
        or next((m for m in present if "gan" in METRICS.get(m).families), None)
        or next((m for m in generation if m in present and not m.startswith("nll_")), None)
    )


def quality_vs_cost(rep: Report, path: Path) -> FigureFile:
    s = rep.summary
    m = main_generation_metric(s)
    if m is None:
        raise Skip(
            "quality against cost: no generation metric (fid, fid_domain, kid_domain, ...) in these runs"
        )
    pts = _points(s, "train_seconds", m)
    if pts.empty:
        raise Skip(f"quality against cost: no model has both {m} and train_seconds")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    _scatter(ax, s, pts, _colors(s))
    for suite in dict.fromkeys(pts.suite):
        ref = s.reference_value(suite, m)
        if math.isfinite(ref):
            name = "real data" + (f" ({suite})" if s.multi_suite else "")
            ax.axhline(ref, ls=":", color="0.3", lw=1, label=name)
    _log_if_wide(ax, pts.x, "x")
    ax.set_xlabel("training seconds (wall clock of the optimisation steps)")
    ax.set_ylabel(f"{m} {_arrow(m)}")
    ax.set_title(f"{m} against training cost")
    ax.legend(loc="best")
    _save(fig, path)
    return FigureFile(
        path.name,
        "Quality against cost",
        f"The main generation metric ({m}) at the end of the budget against training seconds, mean over "
        "seeds with 95% intervals; the dotted line, where present, is the real-data reference.",
    )


def image_panel(images: list[GridImage], s: Summary, path: Path, title: str, caption: str) -> FigureFile:
    import matplotlib.image as mpimg

    if not images:
        raise Skip(f"{title.lower()}: no grid images in the store")
    plt = _plt()
    fig, axes = _grid(plt, len(images), ncols=4, w=2.9, h=3.15)
    for ax, im in zip(axes, images):
        ax.imshow(mpimg.imread(io.BytesIO(im.png)), interpolation="nearest")
        name = f"{im.suite}/{im.label}" if s.multi_suite else im.label
        ax.set_title(f"{name} (seed {im.seed})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
    _save(fig, path)
    return FigureFile(path.name, title, caption)


# every figure a report may hold, in its order: one a report does not draw is not left in its folder
FIGURE_NAMES = (
    "dots.png", "curves.png", "losses.png", "rate_distortion.png", "quality_vs_cost.png", "samples.png",
    "reconstructions.png",
)  # fmt: skip


def make_figures(rep: Report, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Draw every figure that these runs support; return them and a note for each one skipped."""
    jobs = [
        ("dots.png", metric_dots),
        ("curves.png", metric_curves),
        ("losses.png", loss_curves),
        ("rate_distortion.png", rate_distortion),
        ("quality_vs_cost.png", quality_vs_cost),
        (
            "samples.png",
            lambda r, p: image_panel(
                r.grids["samples"],
                r.summary,
                p,
                "Samples",
                "64 samples per model at the end of its budget. Within a suite every model shows the same "
                "seed, and models of one family with the same latent size decode the same latent draws.",
            ),
        ),
        (
            "reconstructions.png",
            lambda r, p: image_panel(
                r.grids["reconstructions"],
                r.summary,
                p,
                "Reconstructions",
                "The same 32 test images for every model, each followed by its reconstruction "
                "(originals in odd columns).",
            ),
        ),
    ]
    assert tuple(name for name, _ in jobs) == FIGURE_NAMES
    figures, notes = [], []
    for name, draw in jobs:
        try:
            figures.append(draw(rep, out_dir / name))
        except Skip as e:
            notes.append(f"Not drawn: {e}.")
        except Exception as e:  # a figure that fails never stops the tables from being written
            log.warning("figure %s failed: %s: %s", name, type(e).__name__, e)
            notes.append(f"Not drawn: {name}: it failed ({type(e).__name__}: {str(e)[:200]}).")
            _close_all()
    return figures, notes


def _close_all() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")
