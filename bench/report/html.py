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
from bench.report.published import PUBLISHED_NOTES, published_rows
from bench.report.summary import REFERENCE_NAME, Report, Summary, cost_name, fmt_num
from bench.report.tables import (
    Cell,
    empty_note,
    empty_suites,
    has_reference,
    metric_header,
    pooling_notes,
    reference_cell,
    seeds_text,
    stat_cell,
    table_notes,
    unmeasured_notes,
    use_tables,
)
from bench.report.uses import Use, answer_notes, answers
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


def _tip(st: dict[str, Any] | None, baseline: str) -> str:
    """Hover text: the numbers behind a cell."""
    if st is None or not math.isfinite(st["mean"]):
        return ""
    parts = [f"mean {st['mean']:.6g}", f"n = {st['n']}"]
    if math.isfinite(st["std"]):
        parts.append(f"sd {st['std']:.3g}")
    if math.isfinite(st["ci95"]):
        parts.append(f"95% CI ± {st['ci95']:.3g}")
    p = st.get("p", math.nan)
    if isinstance(p, float) and math.isfinite(p):
        parts.append(f"Welch p = {fmt_num(p)} against {baseline}")
    return ", ".join(parts)


def _table(s: Summary, use: Use, cols: list[str]) -> dict[str, Any]:
    """One use's table: its columns, its model rows, and each suite's reference row."""
    kind = "cost" if use.key in ("cost", "eval_cost") else "metric"
    columns = [
        {
            "name": metric_header(m),
            "kind": kind,
            "title": METRICS.get(m).description if m in METRICS else cost_name(m),
        }
        for m in cols
    ]
    rows, refs = [], []
    for suite in dict.fromkeys(s.models.suite):
        part = s.models[s.models.suite == suite]
        base = s.baselines.get(suite, "")
        for _, row in part.iterrows():
            stats = [s.stat(suite, row.label, m) for m in cols]
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
                    "cells": [_cell(stat_cell(st, row.seeds), _tip(st, base)) for st in stats],
                }
            )
        if kind == "metric" and has_reference(s, suite, cols):
            cells = [_cell(reference_cell(s, suite, m)) for m in cols]
            refs.append({"suite": suite, "label": REFERENCE_NAME, "cells": cells})
    return {"key": use.key, "title": use.title, "question": use.question, "columns": columns, "rows": rows,
            "refs": refs}  # fmt: skip


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
        "answers": [{"text": a.text(multi), "use": a.use.key} for a in answers(s)],
        "answer_notes": answer_notes(),
        "tables": [] if s.empty else [_table(s, u, cols) for u, cols in use_tables(s)],
        "notes": table_notes(s) + unmeasured_notes(data, s),
        "pooled": pooling_notes(s, escape=str),
        "empty_suites": empty_suites(data.suites, s),
        "empty_note": empty_note(empty_suites(data.suites, s)),
        "baselines": s.baselines,
        "failed": s.failed.to_dict("records") if not s.failed.empty else [],
        "figures": [fig(f) for f in rep.figures if f.name not in grid_figs],
        "figure_notes": rep.notes if not s.empty else [],
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
        "published": published_rows(data, s),
        "published_notes": PUBLISHED_NOTES,
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
