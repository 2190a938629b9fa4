"""Comparison reports, built from the tracking store alone (never from in-memory run state).

``load_store`` reads the child runs of one or more suites, their reference runs (real data),
the resolved suite config and environment of each suite's latest parent run, and the metrics'
provenance; ``summarise`` aggregates over training seeds (mean, 95% Student-t interval, Welch's
test against the suite's baseline, best per column); ``write_report`` renders ``report.md``,
``results.csv``, ``runs.csv``, ``report.html`` and the figures, and logs them to each suite's
latest parent run. The figures live in ``bench.report.figures``, the HTML page in ``bench.report.html``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.report.stats import ci_half_width, welch
from bench.store.tracking import Tracker

log = logging.getLogger("bench")

COST_COLUMNS = [
    "budget_steps",
    "budget_images",
    "train_seconds",
    "images_per_s",
    "param_count",
    "peak_memory_mb",
]
COST_NAMES = {
    "budget_steps": "steps",
    "budget_images": "images",
    "train_seconds": "train s",
    "images_per_s": "images/s",
    "param_count": "params",
    "peak_memory_mb": "peak MB",
}
COST_NOTES = {
    "budget_steps": "steps = optimiser steps",
    "budget_images": "images = training images seen",
    "train_seconds": "train s = seconds of optimisation (evaluation not counted)",
    "images_per_s": "images/s = training throughput",
    "param_count": "params = parameter count",
    "peak_memory_mb": "peak MB = peak memory (process peak RSS on CPU, peak allocated on CUDA)",
}
REFERENCE_NAME = "real data (reference)"
ALPHA = 0.05  # significance level of the test against the baseline
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- reading the store


def _run_rows(suite: str, runs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        tags = r.data.tags
        rows.append(
            {
                "suite": suite,
                "label": tags.get("label", ""),
                "model": tags.get("model", ""),
                "family": tags.get("family", ""),
                # what the model offers beyond its family, as its run recorded it (None: not recorded)
                "capabilities": _capabilities(tags),
                "seed": int(tags.get("seed", -1)),
                "status": r.info.status,
                "failure_reason": tags.get("failure_reason", ""),
                "run_id": r.info.run_id,
                "start_time": r.info.start_time,
                **r.data.metrics,
            }
        )
    return rows


def _latest_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    # a run re-done after a failure or an interrupt supersedes the earlier one of the same label and seed
    df = df.sort_values("start_time").drop_duplicates(["suite", "label", "seed"], keep="last")
    return df.reset_index(drop=True)


def load_runs(tracker: Tracker, suites: list[str]) -> pd.DataFrame:
    """One row per child run: identity columns, status, failure reason, final metric values."""
    rows = [row for s in suites for row in _run_rows(s, tracker.runs(s))]
    return _latest_per_seed(pd.DataFrame(rows))


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Registered metrics present in the runs, in registry order."""
    from bench.metrics import METRICS

    return [name for name in METRICS if name in df.columns]


@dataclass
class StoreData:
    """What a report needs, as read from the store."""

    uri: str
    suites: list[str]
    runs: pd.DataFrame  # one row per child run (the latest per suite, label and seed)
    references: pd.DataFrame  # one row per suite that has a reference run: suite, run_id, metrics
    configs: dict[str, str] = field(default_factory=dict)  # suite -> resolved suite YAML
    environments: dict[str, dict] = field(default_factory=dict)  # suite -> environment.json
    parents: dict[str, str] = field(default_factory=dict)  # suite -> latest parent run id
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)  # suite, metric, source, provenance

    def suite_config(self, suite: str) -> dict[str, Any]:
        import yaml

        try:
            cfg = yaml.safe_load(self.configs.get(suite, "")) or {}
        except yaml.YAMLError:
            return {}
        return cfg if isinstance(cfg, dict) else {}

    def label_order(self, suite: str) -> list[str]:
        """Model labels in the order of the suite file (then any others, in order of first run)."""
        models = self.suite_config(suite).get("models") or []
        order = [m.get("label") or m.get("name") for m in models if isinstance(m, dict)]
        seen = [lab for lab in self.runs.label[self.runs.suite == suite]] if not self.runs.empty else []
        return list(dict.fromkeys([lab for lab in order if lab in seen] + seen))

    def baseline(self, suite: str) -> str | None:
        """``report.baseline`` of the stored suite config, else the first model."""
        labels = self.label_order(suite)
        chosen = (self.suite_config(suite).get("report") or {}).get("baseline")
        return chosen if chosen in labels else (labels[0] if labels else None)


def load_store(tracker: Tracker, suites: list[str]) -> StoreData:
    """Read everything a report shows from the tracking store."""
    child = {s: tracker.runs(s) for s in suites}
    runs = _latest_per_seed(pd.DataFrame([row for s in suites for row in _run_rows(s, child[s])]))
    kept = set(runs.run_id) if not runs.empty else set()

    ref_rows, prov_rows = [], []
    for s in suites:
        refs = sorted(tracker.runs(s, kind="reference"), key=lambda r: r.info.start_time)
        if refs:
            ref = refs[-1]
            ref_rows.append({"suite": s, "run_id": ref.info.run_id, **ref.data.metrics})
            prov_rows += _provenance(s, REFERENCE_NAME, ref.data.tags)
        for r in sorted(child[s], key=lambda r: r.info.start_time):
            if r.info.run_id in kept:
                prov_rows += _provenance(s, "runs", r.data.tags)
    data = StoreData(
        tracker.uri, list(suites), runs, pd.DataFrame(ref_rows), provenance=_merge_provenance(prov_rows)
    )
    for s in suites:
        parent = tracker.latest_suite_run(s)
        if parent is None:
            continue
        data.parents[s] = parent.info.run_id
        cfg = tracker.artifact_bytes(parent.info.run_id, "suite.yaml")
        if cfg is not None:
            data.configs[s] = cfg.decode("utf-8", "replace")
        env = tracker.artifact_bytes(parent.info.run_id, "environment.json")
        if env is not None:
            try:
                data.environments[s] = json.loads(env)
            except ValueError:
                pass
    return data


def _merge_provenance(rows: list[dict[str, str]]) -> pd.DataFrame:
    """One row per (suite, metric, source): each provenance field once, or its distinct values
    joined by " | " where runs differ. Metrics in registry order."""
    from bench.metrics import METRICS

    merged: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for r in rows:
        try:
            fields = json.loads(r["provenance"])
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            fields = {"value": r["provenance"]}
        slot = merged.setdefault((r["suite"], r["metric"], r["source"]), {})
        for k, v in fields.items():
            text = v if isinstance(v, str) else json.dumps(v)
            if text not in slot.setdefault(k, []):
                slot[k].append(text)
    order = {m: i for i, m in enumerate(METRICS)}
    keys = sorted(merged, key=lambda k: (k[0], order.get(k[1], len(order)), k[1], k[2] != "runs", k[2]))
    return pd.DataFrame(
        [
            {
                "suite": suite,
                "metric": metric,
                "source": source,
                "provenance": json.dumps(
                    {k: " | ".join(v) for k, v in merged[suite, metric, source].items()}
                ),
            }
            for suite, metric, source in keys
        ],
        columns=["suite", "metric", "source", "provenance"],
    )


def _provenance(suite: str, source: str, tags: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"suite": suite, "source": source, "metric": k.removeprefix("provenance."), "provenance": v}
        for k, v in tags.items()
        if k.startswith("provenance.")
    ]


def load_history(tracker: Tracker, runs: pd.DataFrame) -> pd.DataFrame:
    """Every logged value of the registered metrics and training losses of the finished runs.

    Long format: suite, label, seed, run_id, key, step, value.
    """
    cols = ["suite", "label", "seed", "run_id", "key", "step", "value"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    keys = metric_columns(runs) + [c for c in runs.columns if str(c).startswith("train/")]
    rows = []
    for _, r in runs[runs.status == "FINISHED"].iterrows():
        for key in keys:
            if pd.isna(r.get(key)):
                continue
            for step, value in tracker.metric_history(r.run_id, key):
                rows.append((r.suite, r.label, r.seed, r.run_id, key, step, value))
    return pd.DataFrame(rows, columns=cols)


@dataclass(frozen=True)
class GridImage:
    suite: str
    label: str
    seed: int
    png: bytes


def load_grids(tracker: Tracker, runs: pd.DataFrame) -> dict[str, list[GridImage]]:
    """``samples.png`` and ``reconstructions.png`` of one finished run per model.

    Within a suite every model shows the same seed (the smallest one every model finished), so
    the sample grids decode the same latent draws and the reconstructions are of the same images.
    """
    out: dict[str, list[GridImage]] = {"samples": [], "reconstructions": []}
    if runs.empty:
        return out
    done = runs[runs.status == "FINISHED"]
    for suite in dict.fromkeys(runs.suite):
        fin = done[done.suite == suite]
        labels = list(dict.fromkeys(runs.label[runs.suite == suite]))
        per_label = [set(fin.seed[fin.label == lab]) for lab in labels]
        common = set.intersection(*per_label) if per_label and all(per_label) else set()
        for lab, seeds in zip(labels, per_label):
            if not seeds:
                continue
            seed = min(common) if common else min(seeds)
            run_id = fin[(fin.label == lab) & (fin.seed == seed)].run_id.iloc[0]
            for kind in out:
                png = tracker.artifact_bytes(run_id, f"{kind}.png")
                if png:
                    out[kind].append(GridImage(suite, lab, int(seed), png))
    return out


# --------------------------------------------------------------------------- aggregating


@dataclass(frozen=True)
class Summary:
    """One row per (suite, model label); per metric ``m``: ``m_mean``, ``m_std``, ``m_ci95`` (half-width),
    ``m_n`` (seeds with a value), ``m_applies``, ``m_p`` (Welch's p against the baseline),
    ``m_significant`` and ``m_best``; per cost column the same without the last three."""

    table: pd.DataFrame
    failed: pd.DataFrame  # runs that did not finish, with their reason
    metrics: list[str]
    costs: list[str] = field(default_factory=list)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per suite with a reference run
    baselines: dict[str, str] = field(default_factory=dict)  # suite -> baseline label

    @property
    def multi_suite(self) -> bool:
        return not self.table.empty and self.table.suite.nunique() > 1

    def key(self, row: pd.Series) -> str:
        """How a row is named in figures: its label, prefixed by its suite when there are several."""
        return f"{row.suite}/{row.label}" if self.multi_suite else row.label


def summarise(
    runs: pd.DataFrame,
    baselines: dict[str, str] | None = None,
    order: dict[str, list[str]] | None = None,
    references: pd.DataFrame | None = None,
) -> Summary:
    """Aggregate the runs over seeds. Only FINISHED runs count; the others are listed in ``failed``."""
    from bench.metrics import METRICS

    references = references if references is not None else pd.DataFrame()
    if runs.empty:
        return Summary(pd.DataFrame(), pd.DataFrame(), [], reference=references)
    metrics = metric_columns(runs)
    costs = [c for c in COST_COLUMNS if c in runs.columns]
    finished = runs[runs.status == "FINISHED"]
    failed = runs[runs.status != "FINISHED"][["suite", "label", "seed", "status", "failure_reason", "run_id"]]
    never_ended = ~failed.status.isin(["FAILED", "KILLED"]) & (failed.failure_reason.fillna("") == "")
    failed.loc[never_ended, "failure_reason"] = "never ended: still running, or its process died"
    suites = list(dict.fromkeys(runs.suite))
    keys = []
    for s in suites:
        seen = list(dict.fromkeys(runs.label[runs.suite == s]))
        wanted = (order or {}).get(s, [])
        keys += [(s, lab) for lab in dict.fromkeys([x for x in wanted if x in seen] + seen)]
    base = {s: (baselines or {}).get(s) for s in suites}
    for s in suites:
        if base[s] not in {lab for su, lab in keys if su == s}:
            base[s] = next(lab for su, lab in keys if su == s)

    def values(suite: str, label: str, col: str) -> pd.Series:
        grp = finished[(finished.suite == suite) & (finished.label == label)]
        return grp[col].dropna() if col in grp else pd.Series(dtype=float)

    rows = []
    for suite, label in keys:
        allg = runs[(runs.suite == suite) & (runs.label == label)]
        n_done = int(((finished.suite == suite) & (finished.label == label)).sum())
        n_failed = int(allg.status.isin(["FAILED", "KILLED"]).sum())
        row: dict[str, Any] = {
            "suite": suite,
            "label": label,
            "model": allg.model.iloc[0],
            "family": allg.family.iloc[0],
            "baseline": label == base[suite],
            "seeds": n_done,
            "failed": n_failed,
            "running": len(allg) - n_done - n_failed,  # not ended: in progress, or its process died
        }
        base_family = runs[(runs.suite == suite) & (runs.label == base[suite])].family.iloc[0]
        caps = allg.capabilities.iloc[0] if "capabilities" in allg else None
        for m in metrics + costs:
            is_metric = m in metrics
            applies = not is_metric or METRICS.get(m).applies_to(row["family"], caps)
            vals = values(suite, label, m) if applies else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            row[f"{m}_ci95"] = ci_half_width(vals, CONFIDENCE)
            row[f"{m}_n"] = len(vals)
            if not is_metric:  # costs are measurements of this machine, not samples of a mean
                row[f"{m}_min"] = float(vals.min()) if len(vals) else math.nan
                row[f"{m}_max"] = float(vals.max()) if len(vals) else math.nan
                continue
            row[f"{m}_applies"] = applies
            p = math.nan
            if applies and label != base[suite] and METRICS.get(m).applies_to(base_family):
                p = welch(vals, values(suite, base[suite], m)).p
            row[f"{m}_p"] = p
            row[f"{m}_significant"] = bool(math.isfinite(p) and p < ALPHA)
        rows.append(row)
    table = pd.DataFrame(rows)
    for m in metrics:  # best per column, within each suite, where the models' means differ at all
        higher = METRICS.get(m).higher_is_better
        table[f"{m}_best"] = False
        for s in suites:
            sel = (table.suite == s) & table[f"{m}_mean"].notna()
            col = table.loc[sel, f"{m}_mean"]
            if col.nunique() < 2:
                continue
            table.loc[sel, f"{m}_best"] = col == (col.max() if higher else col.min())
    return Summary(table, failed.reset_index(drop=True), metrics, costs, references, base)


def _capabilities(tags: dict[str, str]) -> frozenset[str] | None:
    """The ``bench.capabilities`` tag of a run (comma-separated); None for a run logged before
    runs recorded it, which is then judged by its family alone."""
    raw = tags.get("bench.capabilities")
    return None if raw is None else frozenset(c for c in raw.split(",") if c)


# --------------------------------------------------------------------------- formatting


def fmt_num(x: float | None) -> str:
    """A number for a table: integers with thousands separators, otherwise 4 significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


def fmt_mean_ci(mean: float, ci: float) -> str:
    """``mean ± ci`` with the interval to two significant digits and the mean to the same decimals."""
    if not math.isfinite(mean):
        return ""
    if not (math.isfinite(ci) and ci > 0):
        return fmt_num(mean)
    if abs(mean) < 1e-3 and mean != 0 or ci < 1e-6:
        return f"{mean:.3g} ± {ci:.2g}"
    d = max(0, 1 - math.floor(math.log10(ci)))
    return f"{mean:.{d}f} ± {ci:.{d}f}"


@dataclass(frozen=True)
class Cell:
    """One rendered table cell: the text, the number to sort by, and its marks."""

    text: str
    value: float = math.nan
    best: bool = False
    significant: bool = False
    kind: str = "value"  # value | na | missing


def metric_cell(row: pd.Series, m: str) -> Cell:
    if not row[f"{m}_applies"]:
        return Cell("n/a", kind="na")
    mean = row[f"{m}_mean"]
    if not math.isfinite(mean):
        return Cell("—", kind="missing")
    text = fmt_mean_ci(mean, row[f"{m}_ci95"])
    if row[f"{m}_n"] != row["seeds"]:
        text += f" (n={row[f'{m}_n']})"
    return Cell(text, mean, bool(row[f"{m}_best"]), bool(row[f"{m}_significant"]))


def cost_cell(row: pd.Series, c: str) -> Cell:
    mean = row[f"{c}_mean"]
    if not math.isfinite(mean):
        return Cell("—", kind="missing")
    lo, hi = row.get(f"{c}_min", math.nan), row.get(f"{c}_max", math.nan)
    spread = f" ({fmt_num(lo)}–{fmt_num(hi)})" if math.isfinite(lo) and math.isfinite(hi) and lo < hi else ""
    return Cell(fmt_num(mean) + spread, mean)


def reference_cell(ref: pd.Series | None, m: str) -> Cell:
    if ref is None or m not in ref or pd.isna(ref[m]):
        return Cell("n/a", kind="na")
    return Cell(fmt_num(float(ref[m])), float(ref[m]))


def cell(row: pd.Series, m: str) -> str:
    """The text of one metric or cost cell (kept for callers of the first report version)."""
    return (metric_cell(row, m) if f"{m}_applies" in row else cost_cell(row, m)).text


def metric_header(m: str) -> str:
    from bench.metrics import METRICS

    if m in METRICS:
        return f"{m} {'↑' if METRICS.get(m).higher_is_better else '↓'}"
    return COST_NAMES.get(m, m)


def row_name(row: pd.Series, summary: Summary) -> str:
    n_models = int((summary.table.suite == row.suite).sum())
    return row.label + (" (baseline)" if row.baseline and n_models > 1 else "")


def seeds_text(row: pd.Series) -> str:
    """Finished seeds, then those that failed or were killed, then those that never ended."""
    extra = [f"+{row.failed} failed"] if row.failed else []
    extra += [f"+{row.running} not ended"] if row.get("running", 0) else []
    return f"{row.seeds}" + (f" ({', '.join(extra)})" if extra else "")


def reference_row(summary: Summary, suite: str) -> pd.Series | None:
    ref = summary.reference
    if ref.empty:
        return None
    sel = ref[ref.suite == suite]
    return sel.iloc[-1] if len(sel) else None


def md_escape(text: str) -> str:
    """Text for a markdown table cell: pipes escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(c: Cell) -> str:
    text = c.text + ("†" if c.significant else "")
    return f"**{text}**" if c.best else text


def markdown_table(summary: Summary, columns: list[str] | None = None) -> str:
    """The comparison table in markdown; a real-data reference row closes each suite that has one."""
    t = summary.table
    if t.empty:
        return "(no runs)\n"
    cols = columns or summary.metrics + summary.costs
    multi = summary.multi_suite
    head = (["suite"] if multi else []) + ["model", "family", "seeds"]
    lines = [
        "| " + " | ".join(head + [metric_header(c) for c in cols]) + " |",
        "|" + "---|" * len(head) + "--:|" * len(cols),
    ]
    for suite in dict.fromkeys(t.suite):
        for _, row in t[t.suite == suite].iterrows():
            ident = ([row.suite] if multi else []) + [
                md_escape(row_name(row, summary)),
                row.family,
                seeds_text(row),
            ]
            cells = [
                _md_cell(metric_cell(row, c) if c in summary.metrics else cost_cell(row, c)) for c in cols
            ]
            lines.append("| " + " | ".join(ident + cells) + " |")
        ref = reference_row(summary, suite)
        if ref is not None:
            ident = ([suite] if multi else []) + [REFERENCE_NAME, "data", "—"]
            cells = [reference_cell(ref, c).text if c in summary.metrics else "" for c in cols]
            lines.append("| " + " | ".join(ident + cells) + " |")
    return "\n".join(lines) + "\n"


def table_notes(summary: Summary) -> list[str]:
    """What the table's numbers and marks mean, in the order a reader meets them."""
    if summary.table.empty:
        return []
    base = ", ".join(
        f"`{b}`" + (f" ({s})" if summary.multi_suite else "") for s, b in summary.baselines.items()
    )
    notes = [
        f"Each cell is the mean ± the half-width of its {CONFIDENCE:.0%} confidence interval "
        "(Student t, n − 1 degrees of freedom) over training seeds; `seeds` counts the finished runs "
        "(n=k in a cell when fewer of them have the value; one seed shows the mean alone).",
        "↑ higher is better, ↓ lower is better; **bold**: the best mean of its column"
        + (" within its suite" if summary.multi_suite else "")
        + "; n/a: the metric does not apply to the model (its family, or a capability it lacks)"
        + "; —: not measured.",
    ]
    if summary.table.suite.value_counts().max() > 1:
        notes.append(
            f"† differs from the baseline {base} at p < {ALPHA:g} by Welch's two-sided t-test over "
            "seeds (unequal variances; needs two or more seeds on each side; not corrected for multiple "
            "comparisons)."
        )
    if summary.costs:
        notes.append("What each model cost: " + "; ".join(COST_NOTES[c] for c in summary.costs) + ".")
    if not summary.reference.empty:
        notes.append(f"{REFERENCE_NAME}: the metrics of real held-out images scored as if they were samples.")
    return notes


# --------------------------------------------------------------------------- writing


@dataclass
class Report:
    """Everything rendered into the output files."""

    title: str
    data: StoreData
    summary: Summary
    history: pd.DataFrame
    grids: dict[str, list[GridImage]]
    figures: list[Any] = field(default_factory=list)  # bench.report.figures.FigureFile
    notes: list[str] = field(default_factory=list)  # figures that could not be drawn, and why
    generated: str = ""
