"""Write a report: the markdown, CSV and HTML files and the figures, into a folder and into the
store beside each suite's runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bench.files import atomic_write
from bench.report import figures, html
from bench.report.published import published_markdown
from bench.report.summary import (
    INTERNAL_RUN_COLUMNS,
    Report,
    Summary,
    load_grids,
    load_history,
    load_store,
    results_table,
    summarise,
)
from bench.report.tables import (
    csv_safe,
    empty_note,
    empty_suites,
    markdown_answers,
    markdown_tables,
    md_code,
    md_escape,
    md_fence,
    pooling_notes,
    table_notes,
    unmeasured_notes,
)
from bench.report.uses import answer_notes
from bench.store.tracking import Tracker, redact_uri

log = logging.getLogger("bench")


def _markdown(rep: Report) -> str:
    from bench.metrics import METRICS

    s, data = rep.summary, rep.data
    md = [f"# {rep.title}", "", f"Tracking store: `{md_code(redact_uri(data.uri))}`  "]
    md += [f"Generated: {rep.generated}", ""]
    answers = markdown_answers(s)
    if answers:
        md += ["## Answer", "", answers]
        md += [f"_{n}_" for n in answer_notes()] + [""]
    md += ["## Results", "", markdown_tables(s)]
    md += [f"- {n}" for n in table_notes(s) + unmeasured_notes(data, s)]
    md += published_markdown(data, s)
    empty = empty_suites(data.suites, s)
    if empty:
        md += ["", empty_note(empty)]
    if not s.failed.empty:
        md += [
            "",
            "## Runs and metrics that did not finish",
            "",
            "| suite | model | seed | status | reason |",
            "|---|---|---|---|---|",
        ]
        for _, r in s.failed.iterrows():
            md.append(
                f"| {r.suite} | {md_escape(r.label)} | {r.seed} | {r.status} "
                f"| {md_escape(r.failure_reason or '—')} |"
            )
    if rep.figures or (rep.notes and not s.empty):
        md += ["", "## Figures", ""]
        for f in rep.figures:
            md += [f"### {f.title}", "", f"![{f.title}]({f.name})", "", f.caption, ""]
        md += [f"- {n}" for n in rep.notes]
    if s.metrics:
        md += ["", "## Metrics", ""]
        md += [
            f"- `{m}` ({'higher' if METRICS.get(m).higher_is_better else 'lower'} is better; "
            f"{'/'.join(METRICS.get(m).families)}): {METRICS.get(m).description}"
            for m in s.metrics
        ]
    if not data.provenance.empty:
        md += [
            "",
            "## Provenance of the metrics",
            "",
            "| suite | metric | source | provenance |",
            "|---|---|---|---|",
        ]
        for _, p in data.provenance.iterrows():
            md.append(f"| {p.suite} | {p.metric} | {p.source} | `{md_code(p.provenance)}` |")
    for suite in data.suites:
        if suite in data.configs:
            config = data.configs[suite].rstrip()
            fence = md_fence(config)
            md += ["", f"## Suite `{suite}` (resolved config)", "", f"{fence}yaml", config, fence]
        env = data.environments.get(suite)
        if env:  # written by the run, read back from the store: text like a label's, escaped
            pairs = [f"{md_escape(k)} {md_escape(v)}" for k, v in env.items() if v is not None]
            md += ["", "Environment: " + ", ".join(pairs)]
    return "\n".join(md) + "\n"


def write_report(
    tracker: Tracker, suites: list[str], out_dir: Path, log_to_store: bool = True
) -> tuple[Summary, list[Path]]:
    """Write the report files into ``out_dir`` and log them to each suite's latest parent run.

    Returns the summary and the written paths: ``report.md``, ``results.csv`` (one row per model,
    then each suite's real-data reference row), ``runs.csv``, ``report.html``, ``summary.csv`` (the
    long format: one row per suite, model and metric), then the figures (and ``reference.csv`` when
    a suite has a reference run).
    """
    data = load_store(tracker, suites)
    summary = summarise(
        data.runs,
        baselines={s: b for s in suites if (b := data.baseline(s))},
        order={s: data.label_order(s) for s in suites},
        references=data.references,
    )
    rep = Report(
        title=f"bench report: {', '.join(suites)}",
        data=data,
        summary=summary,
        history=load_history(tracker, data.runs),
        grids=load_grids(tracker, data.runs),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rep.figures, rep.notes = figures.make_figures(rep, out_dir)

    names = ["report.md", "results.csv", "runs.csv", "report.html", "summary.csv"]
    paths = [out_dir / n for n in names]
    # each file whole or not at all: a report killed mid-write leaves the previous file, never a torn one
    _write(paths[0], _markdown(rep))
    _write(paths[1], csv_safe(results_table(summary)).to_csv(index=False))
    runs = data.runs.drop(columns=INTERNAL_RUN_COLUMNS, errors="ignore")
    _write(paths[2], csv_safe(runs).to_csv(index=False))
    _write(paths[3], html.render(rep, out_dir))
    _write(paths[4], csv_safe(summary.long).to_csv(index=False))
    paths += [out_dir / f.name for f in rep.figures]
    if not data.references.empty:
        paths.append(out_dir / "reference.csv")
        _write(paths[-1], csv_safe(data.references).to_csv(index=False))
    # a folder written again holds this report alone: a figure or reference.csv of an earlier report
    # that this one does not have would be read as part of it
    for stale in {out_dir / n for n in (*figures.FIGURE_NAMES, "reference.csv")} - set(paths):
        if stale.is_file():
            stale.unlink()

    if log_to_store:
        artifact_dir = "report" if len(suites) == 1 else f"report/{'+'.join(suites)}"
        for suite, run_id in data.parents.items():
            try:
                tracker.log_files(run_id, paths, artifact_dir)
                if len(suites) == 1:  # a report of several suites is not one suite's answer
                    note = store_note(summary, rep.generated, artifact_dir)
                    tracker.describe(run_id, note, experiment_owned_by=NOTE_HEAD)
            except Exception as e:  # the files on disk are the report; the store copy is a convenience
                log.warning("could not log the report to the parent run of %s: %s", suite, e)
    return summary, paths


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


NOTE_HEAD = "**What bench's latest report of this suite answers**"
NOTE_LIMIT = 7900  # characters: MLflow keeps 8,000 of a run tag and cuts the rest silently


def store_note(summary: Summary, generated: str, artifact_dir: str) -> str:
    """The description of a suite's parent run and experiment in the MLflow UI: the answer per use,
    then any warning (as the report orders them), and where the whole report is; cut at a line
    where it would pass MLflow's limit, saying so."""
    head = (
        f"{NOTE_HEAD} ({generated}; the tables, figures and how each score was computed: "
        f"`{artifact_dir}/report.html` in the artifacts of the suite's run):\n\n"
    )
    warnings = "".join(f"\n**Warning:** {n}\n" for n in pooling_notes(summary))
    text = head + (markdown_answers(summary) or "(no runs)\n") + warnings
    if len(text) <= NOTE_LIMIT:
        return text
    cut = "\n(cut here: the whole answer is in report.md)\n"
    return text[: text.rfind("\n", 0, NOTE_LIMIT - len(cut)) + 1] + cut
