"""Comparison reports, built from the tracking store alone (never from in-memory run state).

``load_runs`` turns the child runs of one or more suites into a per-run DataFrame;
``summarise`` aggregates over seeds; ``write_report`` renders markdown and CSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.tracking import Tracker

COST_COLUMNS = [
    "budget_steps",
    "budget_images",
    "train_seconds",
    "images_per_s",
    "param_count",
    "peak_memory_mb",
]


def load_runs(tracker: Tracker, suites: list[str]) -> pd.DataFrame:
    """One row per child run: identity columns, status, failure reason, final metric values."""
    rows = []
    for suite in suites:
        for r in tracker.runs(suite):
            tags = r.data.tags
            rows.append(
                {
                    "suite": suite,
                    "label": tags.get("label", ""),
                    "model": tags.get("model", ""),
                    "family": tags.get("family", ""),
                    "seed": int(tags.get("seed", -1)),
                    "status": r.info.status,
                    "failure_reason": tags.get("failure_reason", ""),
                    "run_id": r.info.run_id,
                    "start_time": r.info.start_time,
                    **r.data.metrics,
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # a run re-done after a failure or an interrupt supersedes the earlier one of the same label and seed
    df = df.sort_values("start_time").drop_duplicates(["suite", "label", "seed"], keep="last")
    return df.reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Registered metrics present in the runs, in registry order."""
    from bench.metrics import METRICS

    return [name for name in METRICS if name in df.columns]


@dataclass(frozen=True)
class Summary:
    table: pd.DataFrame  # one row per (suite, label): "<metric>_mean", "<metric>_std", "<metric>_n"
    failed: pd.DataFrame  # runs that did not finish, with their reason
    metrics: list[str]


def summarise(runs: pd.DataFrame) -> Summary:
    from bench.metrics import METRICS

    if runs.empty:
        return Summary(pd.DataFrame(), pd.DataFrame(), [])
    metrics = metric_columns(runs)
    finished = runs[runs.status == "FINISHED"]
    failed = runs[runs.status != "FINISHED"][["suite", "label", "seed", "status", "failure_reason"]]
    order = list(dict.fromkeys(zip(runs.suite, runs.label)))
    rows = []
    for suite, label in order:
        grp = finished[(finished.suite == suite) & (finished.label == label)]
        allg = runs[(runs.suite == suite) & (runs.label == label)]
        row = {
            "suite": suite,
            "label": label,
            "model": allg.model.iloc[0],
            "family": allg.family.iloc[0],
            "seeds": len(grp),
            "failed": len(allg) - len(grp),
        }
        for m in metrics + [c for c in COST_COLUMNS if c in runs.columns]:
            applies = m in COST_COLUMNS or METRICS.get(m).applies_to(row["family"])
            vals = grp[m].dropna() if m in grp else pd.Series(dtype=float)
            row[f"{m}_mean"] = vals.mean() if applies and len(vals) else math.nan
            row[f"{m}_std"] = vals.std(ddof=1) if applies and len(vals) > 1 else math.nan
            row[f"{m}_n"] = len(vals) if applies else 0
            row[f"{m}_applies"] = applies
        rows.append(row)
    return Summary(pd.DataFrame(rows), failed.reset_index(drop=True), metrics)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


def cell(row: pd.Series, m: str) -> str:
    """'mean ± std', 'n/a' where the metric does not apply to the family, '—' where it is missing."""
    if not row[f"{m}_applies"]:
        return "n/a"
    mean, std = row[f"{m}_mean"], row[f"{m}_std"]
    if isinstance(mean, float) and math.isnan(mean):
        return "—"
    return f"{_fmt(mean)} ± {_fmt(std)}" if not math.isnan(std) else _fmt(mean)


def markdown_table(summary: Summary, columns: list[str] | None = None) -> str:
    from bench.metrics import METRICS

    t = summary.table
    if t.empty:
        return "(no runs)\n"
    cols = columns or summary.metrics + [c for c in COST_COLUMNS if f"{c}_mean" in t]
    multi = t.suite.nunique() > 1
    head = (["suite"] if multi else []) + ["model", "family", "seeds"]
    names = [f"{c} {'↑' if METRICS.get(c).higher_is_better else '↓'}" if c in METRICS else c for c in cols]
    lines = ["| " + " | ".join(head + names) + " |", "|" + "---|" * (len(head) + len(cols))]
    for _, row in t.iterrows():
        ident = ([row.suite] if multi else []) + [
            row.label,
            row.family,
            f"{row.seeds}" + (f" (+{row.failed} failed)" if row.failed else ""),
        ]
        lines.append("| " + " | ".join(ident + [cell(row, c) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def write_report(tracker: Tracker, suites: list[str], out_dir: Path) -> tuple[Summary, list[Path]]:
    """Write ``report.md`` and ``results.csv`` (one row per model) and ``runs.csv`` (one per run)."""
    from bench.metrics import METRICS

    runs = load_runs(tracker, suites)
    summary = summarise(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# bench report: {', '.join(suites)}", "", f"Tracking store: `{tracker.uri}`", ""]
    md.append(
        f"Mean ± standard deviation over training seeds ({'seeds' if len(runs) else 'no runs'} column: "
        "how many finished). ↑ higher is better, ↓ lower is better; n/a: the metric does not apply "
        "to the model's family.\n"
    )
    md.append(markdown_table(summary))
    if not summary.failed.empty:
        md += [
            "",
            "## Runs that did not finish",
            "",
            "| suite | model | seed | status | reason |",
            "|---|---|---|---|---|",
        ]
        for _, r in summary.failed.iterrows():
            md.append(f"| {r.suite} | {r.label} | {r.seed} | {r.status} | {r.failure_reason or '—'} |")
    if summary.metrics:
        md += ["", "## Metrics", ""]
        md += [
            f"- `{m}` ({'higher' if METRICS.get(m).higher_is_better else 'lower'} is better): "
            f"{METRICS.get(m).description}"
            for m in summary.metrics
        ]
    paths = [out_dir / "report.md", out_dir / "results.csv", out_dir / "runs.csv"]
    paths[0].write_text("\n".join(md) + "\n", encoding="utf-8")
    summary.table.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    return summary, paths
