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

from bench.report.summary import StoreData, Summary, fmt_mean_ci, fmt_num, kind_of, shown_value
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
        # a value JSON cannot write (a YAML date, a set) compares as its text
        return measured == (published if isinstance(published, str) else json.dumps(published, default=str))
    try:
        return float(measured) == float(published)
    except (ValueError, OverflowError):  # not a number, or an integer past the float range
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
        want_text = want if isinstance(want, str) else json.dumps(want, default=str)
        shown.append(f"{key} {got if got is not None else '?'}")
        if got is None:
            differ.append(f"the runs record no {key}")
        elif not _same(got, want):
            differ.append(f"{key} {got} here, {want_text} published")
    return ", ".join(shown), "; ".join(differ)


def _number(value: Any) -> float | None:
    """A published number as a float; None where it is not a finite number (text, true/false, a
    list, NaN, infinity, an integer past the float range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _published(data: StoreData, suite: str, path: str, pub: Any) -> tuple[float, float, dict] | None:
    """(value, pm, protocol) of one published value of the stored suite config; None, with one
    warning naming the run and the field, where its value or ± is not a finite number (a ± also not
    negative) or it is not a mapping: a published value is a number or it is not shown."""
    if not isinstance(pub, dict):
        data.config_warning(suite, path, f"is {kind_of(pub)}, not a mapping")
        return None
    raw = pub.get("value")
    value = _number(raw)
    if value is None:
        data.config_warning(suite, f"{path}.value", f"is {shown_value(raw)}, not a finite number")
        return None
    pm = 0.0 if pub.get("pm") is None else _number(pub.get("pm"))
    if pm is None or pm < 0:
        data.config_warning(suite, f"{path}.pm", f"is {shown_value(pub.get('pm'))}, not a finite number ≥ 0")
        return None
    protocol = pub.get("protocol")
    if protocol is not None and not isinstance(protocol, dict):
        data.config_warning(suite, f"{path}.protocol", f"is {kind_of(protocol)}, not a mapping")
    return value, pm, protocol if isinstance(protocol, dict) else {}


def published_rows(data: StoreData, summary: Summary) -> list[dict[str, Any]]:
    """One row per (suite, model, metric) with a published value in the stored suite config."""
    rows = []
    for suite in data.suites:
        for i, m, label in data.config_models(suite):
            refs = m.get("reference")
            if refs is None:
                continue
            if not isinstance(refs, dict):
                data.config_warning(suite, f"models.{i}.reference", f"is {kind_of(refs)}, not a mapping")
                continue
            for metric, pub in refs.items():
                if not isinstance(metric, str):
                    data.config_warning(suite, f"models.{i}.reference.{metric}", "is not named by text")
                    continue
                published = _published(data, suite, f"models.{i}.reference.{metric}", pub)
                if published is None:
                    continue
                value, pm, protocol = published
                st = summary.stat(suite, label, metric)
                mean = float(st["mean"]) if st else math.nan
                ci = float(st["ci95"]) if st else math.nan
                n = int(st["n"]) if st else 0
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
