"""The report as one self-contained HTML page: inline CSS and JavaScript, images as data URIs.

It opens offline from disk (no CDN, no relative links), in the MLflow UI's artifact view, or
attached to an e-mail. The table sorts by any column (click its header); the figures, the
sample and reconstruction grids, the failed runs, the provenance of every metric and each
suite's resolved config follow it. Rendering is Jinja2 with autoescaping: labels, failure
reasons and configs come from users and are shown as text, never as markup.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from bench.metrics import METRICS
from bench.report.summary import (
    COST_NAMES,
    REFERENCE_NAME,
    Cell,
    Report,
    Summary,
    cost_cell,
    fmt_num,
    metric_cell,
    metric_header,
    reference_cell,
    reference_row,
    seeds_text,
    table_notes,
)
from bench.store.tracking import redact_uri

TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(c: Cell, tip: str = "", cls: str = "") -> dict[str, Any]:
    classes = [cls] if cls else []
    if c.kind != "value":
        classes.append(c.kind)
    if c.best:
        classes.append("best")
    return {
        "text": c.text,
        "sort": c.value if math.isfinite(c.value) else None,
        "significant": c.significant,
        "cls": " ".join(classes),
        "tip": tip,
    }


def _tip(row, m: str, baseline: str) -> str:
    """Hover text: the numbers behind a cell."""
    if not math.isfinite(row[f"{m}_mean"]):
        return ""
    parts = [f"mean {row[f'{m}_mean']:.6g}", f"n = {row[f'{m}_n']}"]
    if math.isfinite(row[f"{m}_std"]):
        parts.append(f"sd {row[f'{m}_std']:.3g}")
    if math.isfinite(row[f"{m}_ci95"]):
        parts.append(f"95% CI ± {row[f'{m}_ci95']:.3g}")
    p = row.get(f"{m}_p", math.nan)
    if isinstance(p, float) and math.isfinite(p):
        parts.append(f"Welch p = {fmt_num(p)} against {baseline}")
    return ", ".join(parts)


def _table_rows(s: Summary) -> tuple[list[dict], list[dict]]:
    """The table's model rows and reference rows, as cells with their hover text."""
    rows, refs = [], []
    for suite in dict.fromkeys(s.table.suite) if not s.table.empty else []:
        part = s.table[s.table.suite == suite]
        for _, row in part.iterrows():
            base = s.baselines.get(suite, "")
            cells = [_cell(metric_cell(row, m), _tip(row, m, base)) for m in s.metrics]
            cells += [_cell(cost_cell(row, c), _tip(row, c, base), "cost") for c in s.costs]
            rows.append(
                {
                    "suite": suite,
                    "label": row.label,
                    "family": row.family,
                    "baseline": bool(row.baseline) and len(part) > 1,
                    "seeds": seeds_text(row),
                    "seeds_sort": int(row.seeds),
                    "failed": int(row.failed),
                    "running": int(row.running),
                    "cells": cells,
                }
            )
        ref = reference_row(s, suite)
        if ref is not None:
            cells = [_cell(reference_cell(ref, m)) for m in s.metrics] + [
                {"text": "", "sort": None, "significant": False, "cls": "cost", "tip": ""} for _ in s.costs
            ]
            refs.append({"suite": suite, "label": REFERENCE_NAME, "cells": cells})
    return rows, refs


def _provenance(provenance) -> list[dict[str, Any]]:
    """One entry per (suite, metric): where its value came from, as key/value fields."""
    prov = []
    for _, p in provenance.iterrows() if not provenance.empty else []:
        try:
            fields = json.loads(p.provenance)
        except ValueError:
            fields = p.provenance
        prov.append(
            {
                "suite": p.suite,
                "metric": p.metric,
                "source": p.source,
                "fields": fields if isinstance(fields, dict) else {"value": fields},
            }
        )
    return prov


def context(rep: Report, out_dir: Path) -> dict[str, Any]:
    """Plain data for the template."""
    s, data = rep.summary, rep.data
    multi = s.multi_suite
    columns = [
        {"name": metric_header(m), "kind": "metric", "title": METRICS.get(m).description} for m in s.metrics
    ] + [{"name": COST_NAMES.get(c, c), "kind": "cost", "title": c} for c in s.costs]
    rows, refs = _table_rows(s)

    def fig(f) -> dict[str, str]:
        return {"title": f.title, "caption": f.caption, "src": data_uri((out_dir / f.name).read_bytes())}

    grid_figs = {"samples.png", "reconstructions.png"}
    grids = {
        kind: [
            {
                "name": f"{g.suite}/{g.label}" if multi else g.label,
                "seed": g.seed,
                "src": data_uri(g.png),
            }
            for g in images
        ]
        for kind, images in rep.grids.items()
    }
    prov = _provenance(data.provenance)
    return {
        "title": rep.title,
        "uri": redact_uri(data.uri),
        "generated": rep.generated,
        "multi": multi,
        "columns": columns,
        "rows": rows,
        "refs": refs,
        "notes": table_notes(s),
        "empty_suites": [x for x in data.suites if s.table.empty or x not in set(s.table.suite)],
        "baselines": s.baselines,
        "failed": s.failed.to_dict("records") if not s.failed.empty else [],
        "figures": [fig(f) for f in rep.figures if f.name not in grid_figs],
        "figure_notes": rep.notes if not s.table.empty else [],
        "grids": grids,
        "metrics": [
            {
                "name": m,
                "direction": "higher" if METRICS.get(m).higher_is_better else "lower",
                "families": "/".join(METRICS.get(m).families),
                "description": METRICS.get(m).description,
            }
            for m in s.metrics
        ],
        "provenance": prov,
        "configs": [{"suite": k, "yaml": data.configs[k]} for k in data.suites if k in data.configs],
        "environments": [{"suite": k, "env": v} for k, v in data.environments.items()],
    }


def inline_markup(text: str):
    """Escape, then render the two bits of markdown the notes use: `code` and **bold**."""
    import re

    from markupsafe import Markup, escape

    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    html = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html)
    return Markup(html)


def render(rep: Report, out_dir: Path) -> str:
    """The page as a string; reads the figures already written to ``out_dir`` to inline them."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["inline"] = inline_markup
    return env.get_template(TEMPLATE.name).render(**context(rep, out_dir))
