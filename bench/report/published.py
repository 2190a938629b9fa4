"""Measured results beside published ones: the suite's ``reference`` blocks (per model, per metric:
the published value, its ± and its source) against the mean and 95% CI over seeds, with a verdict.

The verdict compares the measured mean with the published band [value - pm, value + pm]: inside
it, or above/below it by how much; it also says whether the measured CI reaches the band. A
published value that states its ``protocol`` (provenance fields such as ``n_fake``) is placed only
where the runs' provenance of that metric has the same values; elsewhere the verdict says what
differs, since a number measured another way (FID at another sample count, say) is not on the
published scale.
"""

from __future__ import annotations

import json
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


def _same(measured: str, published: Any) -> bool:
    """Whether a provenance field as stored (text; distinct values across runs joined by " | ")
    is the published protocol's value (numbers compared as numbers: 10000 and 10000.0 agree)."""
    if isinstance(published, bool) or not isinstance(published, int | float):
        return measured == (published if isinstance(published, str) else json.dumps(published))
    try:
        return float(measured) == float(published)
    except ValueError:
        return False


def _measured_provenance(data: StoreData, suite: str, label: str, metric: str) -> dict[str, str]:
    """The provenance of one metric over one model's runs in a suite, each field's distinct values
    joined (another model's runs, measured some other way, do not count)."""
    prov = data.label_provenance
    if prov.empty:
        return {}
    hit = prov[(prov.suite == suite) & (prov.metric == metric) & (prov.source == label)]
    try:
        fields = json.loads(hit.provenance.iloc[0]) if len(hit) else {}
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def protocol_check(protocol: dict[str, Any], measured: dict[str, str]) -> tuple[str, str]:
    """(how the runs measured the protocol's fields, what differs from the publication: "" if
    nothing)."""
    shown, differ = [], []
    for key, want in protocol.items():
        got = measured.get(key)
        want_text = want if isinstance(want, str) else json.dumps(want)
        shown.append(f"{key} {got if got is not None else '?'}")
        if got is None:
            differ.append(f"the runs record no {key}")
        elif not _same(got, want):
            differ.append(f"{key} {got} here, {want_text} published")
    return ", ".join(shown), "; ".join(differ)


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
                protocol = pub.get("protocol") if isinstance(pub.get("protocol"), dict) else {}
                measured_with, differs = protocol_check(
                    protocol, _measured_provenance(data, suite, label, metric)
                )
                placed = verdict(mean if n else math.nan, ci, value, pm)
                rows.append(
                    {
                        "suite": suite,
                        "label": label,
                        "metric": metric,
                        "measured": fmt_mean_ci(mean, ci) if n else "",
                        "seeds": n,
                        "published": f"{fmt_num(value)} ± {fmt_num(pm)}" if pm else fmt_num(value),
                        "source": "; ".join(str(x) for x in (pub.get("source"), pub.get("note")) if x),
                        "measured_with": measured_with,
                        "verdict": f"not comparable: {differs}" if n and differs else placed,
                        "comparable": not (n and differs),
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
        "| suite | model | metric | measured (mean ± 95% CI) | seeds | measured with | published | source "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['suite']} | {md_escape(r['label'])} | `{r['metric']}` | {r['measured'] or '—'} | "
            f"{r['seeds']} | {md_escape(r['measured_with']) or '—'} | {r['published']} | "
            f"{md_escape(r['source'])} | {r['verdict'] if r['comparable'] else md_escape(r['verdict'])} |"
        )
    md += [""] + [f"- {n}" for n in PUBLISHED_NOTES]
    return md


PUBLISHED_NOTES = [
    "The band is the published value ± its published spread; the verdict places the measured mean in it "
    "or says how far outside it lies.",
    '"Measured with" lists the runs\' provenance for the fields the published value\'s protocol states '
    "(each field's distinct values joined by | where runs differ); where any differs from the "
    "publication, the verdict says so instead of placing the mean.",
]
