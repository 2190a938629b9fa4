"""The report's tables, from the long-format summary: cells, one markdown table per use (and one
for cost), and the notes that say what the numbers and marks mean.

A row of a table is a model of a suite; a column is a metric of the use; the real-data reference
row closes each suite's block in the tables whose metrics it has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report.summary import (
    ALPHA,
    CONFIDENCE,
    COST_NAMES,
    METRIC_SECONDS,
    REFERENCE_NAME,
    StoreData,
    Summary,
    cost_name,
    cost_note,
    fmt_mean_ci,
    fmt_num,
)
from bench.report.uses import Use, answer_notes, answers, higher_is_better, metrics_by_use


@dataclass(frozen=True)
class Cell:
    """One rendered table cell: the text, the number to sort by, and its marks."""

    text: str
    value: float = math.nan
    best: bool = False
    significant: bool = False
    kind: str = "value"  # value | na | missing


def stat_cell(st: dict[str, Any] | None, seeds: int) -> Cell:
    """The cell of one long-format row (a metric or a cost column of one model)."""
    if st is None:
        return Cell("—", kind="missing")
    if not st["applies"]:
        return Cell("n/a", kind="na")
    mean = st["mean"]
    if math.isnan(mean):
        return Cell("—", kind="missing")
    if st["kind"] == "cost":  # what this machine measured: the mean and the range, not a t-interval
        lo, hi = st.get("min", math.nan), st.get("max", math.nan)
        ranged = math.isfinite(lo) and math.isfinite(hi) and lo < hi
        spread = f" ({fmt_num(lo)}–{fmt_num(hi)})" if ranged else ""
        return Cell(fmt_num(mean) + spread, mean)
    text = fmt_mean_ci(mean, st["ci95"])
    if st["n"] != seeds:
        text += f" (n={st['n']})"
    return Cell(text, mean, bool(st["best"]), bool(st["significant"]))


def reference_cell(s: Summary, suite: str, m: str) -> Cell:
    v = s.reference_value(suite, m)
    return Cell(fmt_num(v), v) if math.isfinite(v) else Cell("n/a", kind="na")


def metric_header(m: str) -> str:
    if m in COST_NAMES or m.startswith(METRIC_SECONDS):
        return cost_name(m)
    higher = higher_is_better(m)
    return m if higher is None else f"{m} {'↑' if higher else '↓'}"


def row_name(row: Any, summary: Summary) -> str:
    n_models = int((summary.models.suite == row.suite).sum())
    return row.label + (" (baseline)" if row.baseline and n_models > 1 else "")


def seeds_text(row: Any) -> str:
    """Finished seeds, then those that failed or were killed, then those that never ended."""
    extra = [f"+{row.failed} failed"] if row.failed else []
    extra += [f"+{row.running} not ended"] if row.get("running", 0) else []
    return f"{row.seeds}" + (f" ({', '.join(extra)})" if extra else "")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#!~])")


def md_escape(text: str) -> str:
    """Text from a suite or a run (a label, a failure reason) as plain markdown text, on one line:
    ``& < >`` become HTML entities (no raw HTML) and markdown's punctuation is backslash-escaped
    (no links, images, emphasis or table breaks)."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", out).replace("\r", " ").replace("\n", " ")


def md_code(text: str) -> str:
    """Text for inside a markdown code span in a table cell: pipes escaped, no backticks, one line."""
    return str(text).replace("`", "'").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text`` (so the text cannot close it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot be read as spreadsheet formulas (OWASP's CSV-injection
    guidance): a text cell starting with ``= + - @``, tab or carriage return gets a leading ``'``.
    Numbers, and text that is a plain number (``-0.5``), are left as they are; a set of names
    (a run's capabilities) is written as its sorted names, comma-separated."""

    def cell(v: Any) -> Any:
        if isinstance(v, frozenset | set):
            v = ",".join(sorted(map(str, v)))
        if isinstance(v, str) and v.startswith(CSV_FORMULA_START):
            try:
                float(v)
                return v
            except ValueError:
                return "'" + v
        return v

    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_object_dtype(out[col]) or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(cell)
    return out


def _md_cell(c: Cell) -> str:
    text = c.text + ("†" if c.significant else "")
    return f"**{text}**" if c.best else text


def has_reference(s: Summary, suite: str, columns: list[str]) -> bool:
    return any(math.isfinite(s.reference_value(suite, m)) for m in columns)


def markdown_table(summary: Summary, columns: list[str] | None = None) -> str:
    """One comparison table in markdown (every metric and cost column unless ``columns`` says);
    a real-data reference row closes each suite that has a value in these columns."""
    if summary.empty:
        return "(no runs)\n"
    cols = columns or summary.metrics + summary.costs
    multi = summary.multi_suite
    head = (["suite"] if multi else []) + ["model", "family", "seeds"]
    lines = [
        "| " + " | ".join(head + [metric_header(c) for c in cols]) + " |",
        "|" + "---|" * len(head) + "--:|" * len(cols),
    ]
    for suite in dict.fromkeys(summary.models.suite):
        for _, row in summary.models[summary.models.suite == suite].iterrows():
            ident = ([row.suite] if multi else []) + [md_escape(row_name(row, summary)), row.family]
            cells = [_md_cell(stat_cell(summary.stat(suite, row.label, c), row.seeds)) for c in cols]
            lines.append("| " + " | ".join(ident + [seeds_text(row)] + cells) + " |")
        if has_reference(summary, suite, cols):
            ident = ([suite] if multi else []) + [REFERENCE_NAME, "data", "—"]
            cells = [reference_cell(summary, suite, c).text for c in cols]
            lines.append("| " + " | ".join(ident + cells) + " |")
    return "\n".join(lines) + "\n"


def use_tables(summary: Summary) -> list[tuple[Use, list[str]]]:
    """The report's tables: one per use that has metrics in these runs, then cost."""
    return metrics_by_use(summary)


def markdown_answers(summary: Summary) -> str:
    """The answer section: one line per use (and suite)."""
    lines = [f"- {a.text(summary.multi_suite, escape=md_escape)}" for a in answers(summary)]
    return "\n".join(lines) + "\n" if lines else ""


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(x) for x in sorted(seeds))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pooling_notes(summary: Summary, escape=md_escape) -> list[str]:
    """One line per set of rows whose finished runs were trained with different configurations,
    naming each parameter that differs and the seeds of each value (rows that differ alike share a
    line)."""
    pooled = summary.pooled
    if pooled.empty:
        return []
    by_diff: dict[str, list[str]] = {}
    for (suite, label), g in pooled.groupby(["suite", "label"], sort=False):
        diffs = "; ".join(
            f"`{md_code(r.param)}` "
            + ", ".join(
                f"`{md_code(_short(v))}` ({_seeds(seeds)})"
                for v, seeds in sorted(r["values"].items(), key=lambda kv: min(kv[1]))
            )
            for _, r in g.iterrows()
        )
        by_diff.setdefault(diffs, []).append(f"{suite}/{label}" if summary.multi_suite else label)
    return [
        f"{', '.join(escape(n) for n in names)} {'pools' if len(names) == 1 else 'pool'} runs of different "
        f"configurations: {diffs}. The statistics mix them: the report takes the latest run of each model "
        "and seed in the suite's experiment, also of seeds and settings the suite no longer names."
        for diffs, names in by_diff.items()
    ]


def markdown_tables(summary: Summary, level: str = "###") -> str:
    """One table per use, then the cost table, each under its own heading; first, when a row pools
    runs of different configurations, a warning naming them."""
    if summary.empty:
        return "(no runs)\n"
    out = [f"**Warning:** {n}\n" for n in pooling_notes(summary)]
    for use, cols in use_tables(summary):
        out += [f"{level} {use.title}", "", f"_{use.question}_", "", markdown_table(summary, cols)]
    return "\n".join(out)


def terminal_summary(summary: Summary) -> str:
    """What ``bench run`` and ``bench report`` print: the answers, then the tables."""
    answers_md = markdown_answers(summary)
    return (answers_md + "\n" if answers_md else "") + markdown_tables(summary)


def table_notes(summary: Summary) -> list[str]:
    """What the tables' numbers and marks mean, in the order a reader meets them."""
    if summary.empty:
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
        + "; n/a: the metric does not apply to the model (its family, a capability it lacks, or class "
        "labels the data lacks); —: not measured (a metric that failed is listed with its reason "
        "under Runs and metrics that did not finish).",
    ]
    if summary.models.suite.value_counts().max() > 1:
        notes.append(
            f"† differs from the baseline {base} at p < {ALPHA:g} by Welch's two-sided t-test over "
            "seeds (unequal variances; needs two or more seeds on each side; not corrected for multiple "
            "comparisons)."
        )
    grouped = summary.long[summary.long.group.fillna("") != ""] if "group" in summary.long else None
    if grouped is not None and not grouped.empty:
        from bench.metrics import METRICS

        names = list(dict.fromkeys(grouped.metric))
        within = " / ".join(dict.fromkeys(str(METRICS.get(m).ranked_within) for m in names))
        notes.append(
            f"{', '.join(f'`{m}`' for m in names)}: ranked within each {within} "
            f"({', '.join(sorted(set(grouped.group)))}): bold is the best of its group, † is tested only "
            "against a baseline of the same group, and the answer gives one line per group."
        )
    if summary.costs:
        notes.append(
            "What each model cost: " + "; ".join(dict.fromkeys(cost_note(c) for c in summary.costs)) + "."
        )
    if not summary.reference.empty:
        notes.append(f"{REFERENCE_NAME}: the metrics of real held-out images scored as if they were samples.")
    return notes


def empty_suites(suites: list[str], summary: Summary) -> list[str]:
    """The suites of a report without a model run in the store (a suite whose parent run exists
    but whose first run has not started, or whose process stopped before it did)."""
    have = set() if summary.empty else set(summary.models.suite)
    return [x for x in suites if x not in have]


def empty_note(suites: list[str]) -> str:
    """What the report says of the suites without a model run ("" where there are none)."""
    if not suites:
        return ""
    return (
        f"No finished runs yet in: {', '.join(suites)} (the store holds no model run of "
        f"{'this suite' if len(suites) == 1 else 'these suites'}, finished or not)."
    )


def unmeasured_notes(data: StoreData, summary: Summary) -> list[str]:
    """A line per suite whose stored ``eval.metrics`` name metrics that no run has a value for and
    none failed: a metric not defined for these models as configured leaves no column, so the report
    says so instead of leaving it out unmentioned."""
    from bench.metrics import METRICS

    lines = []
    for suite in data.suites:
        wanted = data.config_value(suite, "eval.metrics", list, [])
        v = summary.values
        have = set(v.metric[v.suite == suite]) if not v.empty else set()
        f = summary.failed
        if not f.empty:
            gaps = f.failure_reason[(f.suite == suite) & f.status.astype(str).str.startswith("metric")]
            have |= {str(r).split(":", 1)[0] for r in gaps}
        missing = [m for m in wanted if isinstance(m, str) and m not in have]
        if not missing:
            continue
        what = "; ".join(
            f"`{m}`" + (f" ({METRICS.get(m).description})" if m in METRICS else "") for m in missing
        )
        where = f" of {suite}" if len(data.suites) > 1 else ""
        lines.append(
            f"In the suite's `eval.metrics`{where} but without a value in any run (not defined for these "
            f"models as configured, or their runs did not finish): {what}."
        )
    return lines


__all__ = [
    "Cell",
    "answer_notes",
    "fmt_mean_ci",
    "fmt_num",
    "markdown_answers",
    "markdown_table",
    "markdown_tables",
    "md_escape",
    "reference_cell",
    "stat_cell",
    "table_notes",
    "terminal_summary",
]
