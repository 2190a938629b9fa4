"""Measured results beside published ones: the suite's ``reference`` blocks (per model, per metric:
the published value, its ± and its source) against the mean and 95% CI over seeds, with a verdict.

The verdict compares the measured mean with the published band [value - pm, value + pm]: inside
it, or above/below it by how much; it also says whether the measured CI reaches the band.
"""

from __future__ import annotations

import math
from typing import Any

from bench.report.summary import StoreData, Summary, fmt_mean_ci, fmt_num
from bench.report.tables import md_escape


def verdict(mean: float, ci: float, value: float, pm: float) -> str:
    """Where a measured mean (± ci) lies relative to the published band value ± pm."""
    if not math.isfinite(mean):
        return "not measured"
    lo, hi = value - pm, value + pm
    if lo <= mean <= hi:
        return "inside the published band"
    side, gap = ("above", mean - hi) if mean > hi else ("below", lo - mean)
    text = f"{side} the published band by {fmt_num(gap)}"
    if math.isfinite(ci) and ci > 0 and gap <= ci:
        text += " (the measured 95% CI reaches it)"
    return text


def published_rows(data: StoreData, summary: Summary) -> list[dict[str, Any]]:
    """One row per (suite, model, metric) with a published value in the stored suite config."""
    rows = []
    for suite in data.suites:
        for m in data.suite_config(suite).get("models") or []:
            if not isinstance(m, dict) or not isinstance(m.get("reference"), dict):
                continue
            label = m.get("label") or m.get("name")
            for metric, pub in m["reference"].items():
                if not isinstance(pub, dict) or "value" not in pub:
                    continue
                st = summary.stat(suite, label, metric)
                mean = float(st["mean"]) if st else math.nan
                ci = float(st["ci95"]) if st else math.nan
                n = int(st["n"]) if st else 0
                value, pm = float(pub["value"]), float(pub.get("pm") or 0.0)
                rows.append(
                    {
                        "suite": suite,
                        "label": label,
                        "metric": metric,
                        "measured": fmt_mean_ci(mean, ci) if n else "",
                        "seeds": n,
                        "published": f"{fmt_num(value)} ± {fmt_num(pm)}" if pm else fmt_num(value),
                        "source": "; ".join(str(x) for x in (pub.get("source"), pub.get("note")) if x),
                        "verdict": verdict(mean if n else math.nan, ci, value, pm),
                    }
                )
    return rows


def published_markdown(data: StoreData, summary: Summary) -> list[str]:
    """The report's "Published values" section (no lines when no suite has a reference block)."""
    rows = published_rows(data, summary)
    if not rows:
        return []
    md = [
        "",
        "## Measured beside published values",
        "",
        "| suite | model | metric | measured (mean ± 95% CI) | seeds | published | source | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['suite']} | {md_escape(r['label'])} | `{r['metric']}` | {r['measured'] or '—'} | "
            f"{r['seeds']} | {r['published']} | {md_escape(r['source'])} | {r['verdict']} |"
        )
    md += [
        "",
        "- The band is the published value ± its published spread; the verdict places the measured mean "
        "in it or says how far outside it lies.",
    ]
    return md
