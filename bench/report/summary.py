"""Comparison reports, built from the tracking store alone (never from in-memory run state).

``load_store`` reads the child runs of one or more suites, their reference runs (real data),
the resolved suite config and environment of each suite's latest parent run, and the metrics'
provenance; ``summarise`` aggregates over training seeds (mean, 95% Student-t interval, Welch's
test against the suite's baseline, best per column); ``write_report`` renders ``report.md``,
``results.csv``, ``runs.csv``, ``report.html`` and the figures, and logs them to each suite's
latest parent run. The figures live in ``bench.report.figures``, the HTML page in ``bench.report.html``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.metrics.samplers import LATENT_FIT_SECONDS
from bench.report.stats import ci_half_width, welch
from bench.store.tracking import Tracker, failed_metrics

log = logging.getLogger("bench")

COST_COLUMNS = [
    "budget_steps",
    "budget_images",
    "train_seconds",
    "eval_seconds",
    "images_per_s",
    "param_count",
    "peak_memory_mb",
]
# each metric's share of ``eval_seconds``, as runs log it: ``eval_seconds.<metric>``
METRIC_SECONDS = "eval_seconds."
COST_NAMES = {
    "budget_steps": "steps",
    "budget_images": "images",
    "train_seconds": "train s",
    "eval_seconds": "eval s",
    "images_per_s": "images/s",
    "param_count": "params",
    "peak_memory_mb": "peak MB",
}
COST_NOTES = {
    "budget_steps": "steps = optimiser steps",
    "budget_images": "images = training images seen",
    "train_seconds": "train s = seconds of optimisation (evaluation not counted)",
    "eval_seconds": "eval s = seconds of evaluation, every metric and the post-training fits",
    "images_per_s": "images/s = training throughput",
    "param_count": "params = parameter count",
    "peak_memory_mb": "peak MB = peak memory (process peak RSS on CPU, peak allocated on CUDA)",
}
METRIC_SECONDS_NOTE = (
    "<metric> s = that metric's seconds within the evaluation (work metrics share, such as encoding "
    "the training split, is charged to the first metric that needs it)"
)
COST_NOTES[LATENT_FIT_SECONDS] = (
    "latent_fit s = the post-training fit of a model's latent sampler (the AE's Gaussian), within the "
    "evaluation; it encodes the training split, which the metrics after it share"
)


def cost_name(column: str) -> str:
    """A cost column's short header: ``train s``, or ``probe_acc s`` for a metric's share."""
    if column.startswith(METRIC_SECONDS):
        return f"{column[len(METRIC_SECONDS):]} s"
    return COST_NAMES.get(column, column)


def cost_note(column: str) -> str:
    if column.startswith(METRIC_SECONDS) and column not in COST_NOTES:
        return METRIC_SECONDS_NOTE
    return COST_NOTES[column]


REFERENCE_NAME = "real data (reference)"
ALPHA = 0.05  # significance level of the test against the baseline
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- reading the store


def _seed(tag: str | None) -> int | None:
    """A run's ``seed`` tag as a number: -1 where the run has none (a run logged before runs
    recorded it), None where it is not a whole number bench could have written (``zero``, ``1.5``,
    ``1_0``, one past the int64 range): a damaged tag, which names no seed the report can group by."""
    if tag is None:
        return -1
    if not isinstance(tag, str) or not SEED_TAG.fullmatch(tag):
        return None
    seed = int(tag)
    return seed if -(2**63) <= seed < 2**63 else None


SEED_TAG = re.compile(r"-?[0-9]{1,20}")


def _run_rows(suite: str, runs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        tags = r.data.tags
        seed = _seed(tags.get("seed"))
        if seed is None:  # grouped with no seed, it would be pooled wrongly or hide another run
            log.warning(
                "suite %s: run %s (%s) is left out of the report: its seed tag %s is not a whole number",
                suite, r.info.run_id, tags.get("label", "no label"), shown_value(tags.get("seed")),
            )  # fmt: skip
            continue
        row = {
            "suite": suite,
            "label": tags.get("label", ""),
            "model": tags.get("model", ""),
            "family": tags.get("family", ""),
            # what the model offers beyond its family, as its run recorded it (None: not recorded)
            "capabilities": _capabilities(tags),
            # the decoder distribution of a model with a likelihood: its values rank apart
            "likelihood": tags.get("bench.likelihood", ""),
            "seed": seed,
            "status": r.info.status,
            "failure_reason": tags.get("failure_reason", ""),
            "metric_failures": failed_metrics(tags),  # a finished run's metrics that did not compute
            # registered metrics the run logged as NaN: left out of the statistics, listed as such
            "nan_metrics": _nan_metrics(r.data.metrics),
            # the configuration the run was trained with, less its seed: runs of one label that
            # differ here are runs of different configurations pooled in one row
            "config_params": {k: v for k, v in r.data.params.items() if k not in POOLABLE_PARAMS},
            "config_hash": tags.get("bench.config_hash", ""),
            "run_id": r.info.run_id,
            "start_time": r.info.start_time,
        }
        # a metric named like one of the row's own fields (``status``, ``seed``, ``label``) would
        # overwrite what the run's tags and state say: such a metric is no result, and is left out
        clash = sorted(k for k in r.data.metrics if k in row)
        if clash:
            log.warning(
                "suite %s: run %s (%s) logged metrics named like the report's own fields, left out: %s",
                suite, r.info.run_id, row["label"] or "no label", ", ".join(clash),
            )  # fmt: skip
        row |= {k: _infinite(v) for k, v in r.data.metrics.items() if k not in row}
        rows.append(row)
    return rows


def shown_value(value: Any, limit: int = 40) -> str:
    """A damaged value from the store for a warning: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# run parameters that may differ between the runs of one row: the seed, and where the data was read
POOLABLE_PARAMS = frozenset({"seed", "dataset.root"})
# columns of the runs that are the report's own bookkeeping, not part of ``runs.csv``
INTERNAL_RUN_COLUMNS = ["metric_failures", "nan_metrics", "config_params"]


def _nan_metrics(metrics: dict[str, float]) -> tuple[str, ...]:
    from bench.metrics import METRICS

    return tuple(k for k, v in metrics.items() if k in METRICS and isinstance(v, float) and math.isnan(v))


def _latest_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    # a run re-done after a failure or an interrupt supersedes the earlier one of the same label and
    # seed; but an attempt that did not finish (a killed ``--restart``) does not hide a finished run
    # of the same configuration: the finished one stands
    df = df.sort_values("start_time", kind="stable")
    keys = ["suite", "label", "seed"]
    newest = df.drop_duplicates(keys, keep="last")
    finished = df[df.status == "FINISHED"].drop_duplicates(keys, keep="last")
    stands = newest.merge(finished[[*keys, "config_hash", "run_id"]], on=[*keys, "config_hash"], how="left",
                          suffixes=("", "_finished"))  # fmt: skip
    swap = (stands.status != "FINISHED") & stands.run_id_finished.notna() & (stands.config_hash != "")
    kept = set(stands.run_id.where(~swap, stands.run_id_finished))
    return df[df.run_id.isin(kept)].reset_index(drop=True)


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
    # the same for each model's runs alone: source is the model's label (what a published value of
    # that model is checked against)
    label_provenance: pd.DataFrame = field(default_factory=pd.DataFrame)

    # (suite, field) of the stored suite config already warned about: one warning each per report
    warned: set[tuple[str, str]] = field(default_factory=set)

    def suite_config(self, suite: str) -> dict[str, Any]:
        """The stored suite config of a suite's latest parent run; {} where there is none or it is
        not a YAML mapping (then with one warning). Its fields may hold anything: read them with
        ``config_value`` (or check their types), never as the suite schema says they are."""
        import yaml

        text = self.configs.get(suite)
        if text is None:
            return {}
        try:
            cfg = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:  # a damaged or edited file
            self.config_warning(suite, "", f"is not YAML ({type(e).__name__})")
            return {}
        if cfg is None:
            return {}
        if not isinstance(cfg, dict):
            self.config_warning(suite, "", f"is {kind_of(cfg)}, not a mapping")
            return {}
        return cfg

    def config_warning(self, suite: str, path: str, problem: str) -> None:
        """Warn, once per suite and field, that a field of the stored suite config is damaged and the
        report goes without it."""
        if (suite, path) in self.warned:
            return
        self.warned.add((suite, path))
        what = f"field {path}" if path else "the file"
        log.warning(
            "suite %s: suite.yaml of run %s: %s %s; the report goes without it",
            suite, self.parents.get(suite, "?"), what, problem,
        )  # fmt: skip

    def config_value(self, suite: str, path: str, kind: type, default: Any = None) -> Any:
        """The field ``path`` (dotted: ``report.baseline``) of the stored suite config where it is
        a ``kind``; ``default`` where it is absent (or null), and, with one warning naming the run
        and the field, where it or a mapping above it is of another type."""
        value: Any = self.suite_config(suite)
        keys = path.split(".")
        for i, key in enumerate(keys):
            if value is None:
                return default
            if not isinstance(value, dict):
                self.config_warning(suite, ".".join(keys[:i]), f"is {kind_of(value)}, not a mapping")
                return default
            value = value.get(key)
        if value is None:
            return default
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.config_warning(suite, path, f"is {kind_of(value)}, not {_KINDS.get(kind, kind.__name__)}")
            return default
        return value

    def config_models(self, suite: str) -> list[tuple[int, dict[str, Any], str]]:
        """(index, entry, label) of each entry of the stored config's ``models`` that is a mapping
        with a text label (or name); any other entry is left out with one warning."""
        out = []
        for i, m in enumerate(self.config_value(suite, "models", list, [])):
            if not isinstance(m, dict):
                self.config_warning(suite, f"models.{i}", f"is {kind_of(m)}, not a mapping")
                continue
            label = m.get("label") or m.get("name")
            if not isinstance(label, str):
                self.config_warning(suite, f"models.{i}.label", f"is {kind_of(label)}, not text")
                continue
            out.append((i, m, label))
        return out

    def label_order(self, suite: str) -> list[str]:
        """Model labels in the order of the suite file (then any others, in order of first run)."""
        order = [label for _, _, label in self.config_models(suite)]
        seen = [lab for lab in self.runs.label[self.runs.suite == suite]] if not self.runs.empty else []
        return list(dict.fromkeys([lab for lab in order if lab in seen] + seen))

    def baseline(self, suite: str) -> str | None:
        """``report.baseline`` of the stored suite config, else the first model."""
        labels = self.label_order(suite)
        chosen = self.config_value(suite, "report.baseline", str)
        return chosen if chosen in labels else (labels[0] if labels else None)


_KINDS = {dict: "a mapping", list: "a list", str: "text", float: "a number", int: "a whole number"}


def kind_of(value: Any) -> str:
    """What a value read from a stored file is, in words: ``a list``, ``text``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    for kind, name in _KINDS.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def load_store(tracker: Tracker, suites: list[str]) -> StoreData:
    """Read everything a report shows from the tracking store."""
    child = {s: tracker.runs(s) for s in suites}
    runs = _latest_per_seed(pd.DataFrame([row for s in suites for row in _run_rows(s, child[s])]))
    kept = set(runs.run_id) if not runs.empty else set()

    ref_rows, prov_rows, label_rows = [], [], []
    for s in suites:
        # the newest complete row; one whose process was killed while writing it only if none is
        refs = sorted(
            tracker.runs(s, kind="reference"), key=lambda r: (r.info.status == "FINISHED", r.info.start_time)
        )
        if refs:
            ref = refs[-1]
            row = {"suite": s, "run_id": ref.info.run_id}
            clash = sorted(k for k in ref.data.metrics if k in row)
            if clash:  # would move the row to another "suite": left out, as a model run's are
                log.warning(
                    "suite %s: reference run %s logged metrics named like the report's own fields, left "
                    "out: %s", s, ref.info.run_id, ", ".join(clash),
                )  # fmt: skip
            ref_rows.append(row | {k: v for k, v in ref.data.metrics.items() if k not in row})
            prov_rows += _provenance(s, REFERENCE_NAME, ref.data.tags)
        for r in sorted(child[s], key=lambda r: r.info.start_time):
            if r.info.run_id in kept:
                label = r.data.tags.get("label", "")
                prov_rows += _provenance(s, "runs", r.data.tags, label)
                label_rows += _provenance(s, label, r.data.tags)
    data = StoreData(
        tracker.uri,
        list(suites),
        runs,
        pd.DataFrame(ref_rows),
        provenance=_merge_provenance(prov_rows),
        label_provenance=_merge_provenance(label_rows),
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
                environment = json.loads(env)
            except (ValueError, RecursionError):  # damaged: the report goes without it
                environment = None
            if isinstance(environment, dict):  # name: value pairs, as bench writes it
                data.environments[s] = environment
    return data


def _merge_provenance(rows: list[dict[str, str]]) -> pd.DataFrame:
    """One row per (suite, metric, source): each provenance field once, or its distinct values
    joined by " | " where runs differ. Where the rows come from several models (``label``), a
    field that is not the same for all of them names the models of each value, "v (ae-mlp, vae-mlp)
    | w (gan-mlp)", so that no field reads as if it held for a model it does not. Metrics in
    registry order."""
    from bench.metrics import METRICS

    merged: dict[tuple[str, str, str], dict[str, dict[str, list[str]]]] = {}
    labels: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        try:
            fields = json.loads(r["provenance"])
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            fields = {"value": r["provenance"]}
        key, label = (r["suite"], r["metric"], r["source"]), r.get("label", r["source"])
        slot = merged.setdefault(key, {})
        if label not in labels.setdefault(key, []):
            labels[key].append(label)
        for k, v in fields.items():
            text = v if isinstance(v, str) else json.dumps(v)
            by = slot.setdefault(k, {}).setdefault(text, [])
            if label not in by:
                by.append(label)

    def field_text(values: dict[str, list[str]], every: list[str]) -> str:
        if len(every) < 2 or all(len(by) == len(every) for by in values.values()):
            return " | ".join(values)  # every value holds for every model (e.g. a seed)
        return " | ".join(f"{v} ({', '.join(by)})" for v, by in values.items())

    order = {m: i for i, m in enumerate(METRICS)}
    keys = sorted(merged, key=lambda k: (k[0], order.get(k[1], len(order)), k[1], k[2] != "runs", k[2]))
    return pd.DataFrame(
        [
            {
                "suite": key[0],
                "metric": key[1],
                "source": key[2],
                "provenance": json.dumps({k: field_text(v, labels[key]) for k, v in merged[key].items()}),
            }
            for key in keys
        ],
        columns=["suite", "metric", "source", "provenance"],
    )


def _provenance(
    suite: str, source: str, tags: dict[str, str], label: str | None = None
) -> list[dict[str, str]]:
    """A run's ``provenance.<metric>`` tags as rows; ``label``: the model, where ``source`` is not it."""
    return [
        {
            "suite": suite,
            "source": source,
            "label": label if label is not None else source,
            "metric": k.removeprefix("provenance."),
            "provenance": v,
        }
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

LONG_COLUMNS = [
    "suite", "label", "family", "metric", "kind", "mean", "std", "ci95", "min", "max", "n", "applies", "p",
    "significant", "best", "group",
]  # fmt: skip
STATS = ["mean", "std", "ci95", "n", "applies", "p", "significant", "best"]  # per metric in the wide view
COST_STATS = ["mean", "std", "min", "max", "n"]  # per cost column: a measurement of this machine


@dataclass(frozen=True)
class Summary:
    """The runs aggregated over training seeds, in long format.

    ``models``: one row per (suite, model label): model, family, baseline, seeds (finished),
    failed, running. ``long``: one row per (suite, label, metric): ``kind`` (metric | cost),
    mean, std, ci95 (half-width), n (seeds with a value), applies, p (Welch against the baseline),
    significant, best (within the suite). ``values``: the finished runs' per-seed values (suite,
    label, seed, metric, value), for tests between any two models. ``table`` is the wide view
    (one row per model, ``<metric>_<stat>`` columns) that ``results.csv`` holds.
    """

    models: pd.DataFrame
    long: pd.DataFrame
    failed: pd.DataFrame  # runs that did not finish, and finished runs' failed metrics, with the reason
    metrics: list[str]
    costs: list[str] = field(default_factory=list)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per suite with a reference run
    baselines: dict[str, str] = field(default_factory=dict)  # suite -> baseline label
    values: pd.DataFrame = field(default_factory=pd.DataFrame)
    # rows whose finished runs were trained with different configurations: suite, label, param, and
    # ``values``, each value with the seeds that used it
    pooled: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def empty(self) -> bool:
        return self.models.empty

    @property
    def multi_suite(self) -> bool:
        return not self.models.empty and self.models.suite.nunique() > 1

    def key(self, row: pd.Series) -> str:
        """How a row is named in figures: its label, prefixed by its suite when there are several."""
        return f"{row.suite}/{row.label}" if self.multi_suite else row.label

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(r["suite"], r["label"], r["metric"]): r for r in self.long.to_dict("records")}

    def stat(self, suite: str, label: str, metric: str) -> dict[str, Any] | None:
        """The long row of one model and one metric (None: the metric is not in these runs)."""
        return self._index.get((suite, label, metric))

    def seed_values(self, suite: str, label: str, metric: str) -> pd.Series:
        v = self.values
        if v.empty:
            return pd.Series(dtype=float)
        return v.value[(v.suite == suite) & (v.label == label) & (v.metric == metric)]

    def reference_value(self, suite: str, metric: str) -> float:
        """The real-data reference value of a metric in a suite; NaN when there is none."""
        ref = self.reference
        if ref.empty or metric not in ref:
            return math.nan
        sel = ref[ref.suite == suite]
        return float(sel[metric].iloc[-1]) if len(sel) and pd.notna(sel[metric].iloc[-1]) else math.nan

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """The wide view: one row per model, per metric ``m``: ``m_mean``, ``m_std``, ``m_ci95``,
        ``m_n`` and, for metrics (not cost columns), ``m_applies``, ``m_p``, ``m_significant``, ``m_best``."""
        return wide(self)


def wide(s: Summary) -> pd.DataFrame:
    """``Summary.long`` pivoted to one row per model (the layout of ``results.csv``)."""
    if s.models.empty:
        return pd.DataFrame()
    rows = []
    for _, m in s.models.iterrows():
        row = m.to_dict()
        for name in s.metrics + s.costs:
            st = s.stat(m.suite, m.label, name) or {}
            for k in STATS if name in s.metrics else COST_STATS:
                row[f"{name}_{k}"] = st.get(k, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def results_table(s: Summary) -> pd.DataFrame:
    """``results.csv``: the wide view, and after each suite's models its real-data reference row
    (``reference`` True, family ``data``, the reference values as means)."""
    t = s.table
    if t.empty:
        return t
    t = t.assign(reference=False)
    parts = []
    for suite in dict.fromkeys(t.suite):
        parts.append(t[t.suite == suite])
        ref = {m: s.reference_value(suite, m) for m in s.metrics}
        if any(math.isfinite(v) for v in ref.values()):
            row: dict[str, Any] = {"suite": suite, "label": REFERENCE_NAME, "model": "data", "family": "data"}
            row |= {"baseline": False, "reference": True}
            row |= {f"{m}_mean": v for m, v in ref.items()}
            row |= {f"{m}_applies": math.isfinite(v) for m, v in ref.items()}
            parts.append(pd.DataFrame([row]))
    out = pd.concat(parts, ignore_index=True)
    return out.astype({c: "Int64" for c in ("seeds", "failed", "running")})


def _order(runs: pd.DataFrame, order: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    keys = []
    for s in dict.fromkeys(runs.suite):
        seen = list(dict.fromkeys(runs.label[runs.suite == s]))
        wanted = (order or {}).get(s, [])
        keys += [(s, lab) for lab in dict.fromkeys([x for x in wanted if x in seen] + seen)]
    return keys


def _failed(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, then the metrics a finished run could not compute (status
    ``metric failed``, one row each), with their reasons."""
    cols = ["suite", "label", "seed", "status", "failure_reason", "run_id"]
    failed = runs[runs.status != "FINISHED"][cols]
    never_ended = ~failed.status.isin(["FAILED", "KILLED"]) & (failed.failure_reason.fillna("") == "")
    failed.loc[never_ended, "failure_reason"] = "never ended: still running, or its process died"
    finished = runs[runs.status == "FINISHED"]
    gaps = [
        {**{c: r[c] for c in cols}, "status": "metric failed", "failure_reason": f"{name}: {why}"}
        for _, r in finished.iterrows()
        if isinstance(r.get("metric_failures"), dict)
        for name, why in r["metric_failures"].items()
    ]
    gaps += [
        {
            **{c: r[c] for c in cols},
            "status": "metric NaN",
            "failure_reason": f"{name}: the run logged NaN; its row's statistics are over the other seeds",
        }
        for _, r in finished.iterrows()
        if isinstance(r.get("nan_metrics"), tuple)
        for name in r["nan_metrics"]
    ]
    if not gaps:
        return failed.reset_index(drop=True)
    return pd.concat([failed, pd.DataFrame(gaps, columns=cols)], ignore_index=True)


def _model_rows(runs: pd.DataFrame, keys: list[tuple[str, str]], base: dict[str, str]) -> pd.DataFrame:
    rows = []
    for suite, label in keys:
        allg = runs[(runs.suite == suite) & (runs.label == label)]
        n_done = int((allg.status == "FINISHED").sum())
        n_failed = int(allg.status.isin(["FAILED", "KILLED"]).sum())
        rows.append(
            {
                "suite": suite,
                "label": label,
                "model": allg.model.iloc[0],
                "family": allg.family.iloc[0],
                "baseline": label == base[suite],
                "seeds": n_done,
                "failed": n_failed,
                "running": len(allg) - n_done - n_failed,  # not ended: in progress, or its process died
            }
        )
    return pd.DataFrame(rows)


def _seed_values(finished: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    cols = ["suite", "label", "seed", "metric", "value"]
    if finished.empty:
        return pd.DataFrame(columns=cols)
    v = finished.melt(["suite", "label", "seed"], [c for c in names if c in finished], "metric", "value")
    return v.dropna(subset=["value"])[cols].reset_index(drop=True)


def _applies(runs: pd.DataFrame, suite: str, label: str, metric: str) -> bool:
    from bench.metrics import METRICS

    g = runs[(runs.suite == suite) & (runs.label == label)]
    caps = g.capabilities.iloc[0] if "capabilities" in g else None
    return METRICS.get(metric).applies_to(g.family.iloc[0], caps)


def _long_rows(runs, models, metrics, costs, values, base) -> list[dict[str, Any]]:
    from bench.metrics import METRICS

    def vals(suite: str, label: str, m: str) -> pd.Series:
        return values.value[(values.suite == suite) & (values.label == label) & (values.metric == m)]

    def group(suite: str, label: str, m: str) -> str:
        """The row's value of the run column its metric is ranked within ("" for one group)."""
        column = METRICS.get(m).ranked_within if m in metrics else None
        if column is None or column not in runs:
            return ""
        g = runs[(runs.suite == suite) & (runs.label == label)][column]
        return str(g.iloc[0]) if len(g) and pd.notna(g.iloc[0]) else ""

    rows = []
    for _, mod in models.iterrows():
        base_family = models[(models.suite == mod.suite) & (models.label == base[mod.suite])].family.iloc[0]
        for m in metrics + costs:
            is_metric = m in metrics
            applies = not is_metric or _applies(runs, mod.suite, mod.label, m)
            v = vals(mod.suite, mod.label, m) if applies else pd.Series(dtype=float)
            p = math.nan
            # seeds that agree exactly (a codec) have no spread, whatever rounding their mean leaves:
            # np.std of three 0.1 is 1.7e-17
            agree = len(v) > 1 and v.nunique() == 1 and math.isfinite(v.iloc[0])
            grp = group(mod.suite, mod.label, m)
            # values ranked apart (another likelihood family) are not tested against the baseline's
            vs_base = is_metric and applies and mod.label != base[mod.suite]
            vs_base = vs_base and grp == group(mod.suite, base[mod.suite], m)
            if vs_base and METRICS.get(m).applies_to(base_family):
                p = welch(v, vals(mod.suite, base[mod.suite], m)).p
            rows.append(
                {
                    "suite": mod.suite,
                    "label": mod.label,
                    "family": mod.family,
                    "metric": m,
                    "kind": "metric" if is_metric else "cost",
                    "mean": float(v.iloc[0]) if agree else float(v.mean()) if len(v) else math.nan,
                    "std": 0.0 if agree else float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                    "ci95": 0.0 if agree else ci_half_width(v, CONFIDENCE),
                    "min": float(v.min()) if len(v) else math.nan,
                    "max": float(v.max()) if len(v) else math.nan,
                    "n": len(v),
                    "applies": applies,
                    "p": p,
                    "significant": bool(math.isfinite(p) and p < ALPHA),
                    "best": False,
                    "group": grp,
                }
            )
    return rows


def _mark_best(long: pd.DataFrame, metrics: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    """Best mean per metric within each suite, where the models' means differ at all. A metric
    ranked within a group (``Metric.ranked_within``, e.g. the likelihood family) gets a best per group."""
    from bench.metrics import METRICS

    for m in metrics:
        metric = METRICS.get(m)
        group = _groups(long, runs, metric.ranked_within)
        for s in dict.fromkeys(long.suite):
            for gv in dict.fromkeys(group[long.suite == s]):
                sel = (long.suite == s) & (long.metric == m) & long["mean"].notna() & (group == gv)
                col = long.loc[sel, "mean"]
                if col.nunique() < 2:
                    continue
                long.loc[sel, "best"] = col == (col.max() if metric.higher_is_better else col.min())
    return long


def _groups(long: pd.DataFrame, runs: pd.DataFrame, column: str | None) -> pd.Series:
    """Each long row's value of the run column ``column`` (one group for all when None)."""
    if column is None or column not in runs:
        return pd.Series("", index=long.index)
    of = runs.drop_duplicates(["suite", "label"]).set_index(["suite", "label"])[column].fillna("")
    return pd.Series([of.get((s, lab), "") for s, lab in zip(long.suite, long.label)], index=long.index)


def _pooled(runs: pd.DataFrame, keys: list[tuple[str, str]]) -> pd.DataFrame:
    """The parameters in which the finished runs of one row differ (a suite run again with other
    seeds, budget or options keeps its earlier runs of the seeds it no longer names). Only parameters
    every one of those runs recorded are compared."""
    cols = ["suite", "label", "param", "values"]
    if "config_params" not in runs:
        return pd.DataFrame(columns=cols)
    done = runs[runs.status == "FINISHED"]
    out = []
    for suite, label in keys:
        g = done[(done.suite == suite) & (done.label == label)]
        params = [p if isinstance(p, dict) else {} for p in g.config_params]
        if len(params) < 2:
            continue
        shared = set.intersection(*(set(p) for p in params))
        for name in sorted(shared):
            by_value: dict[str, list[int]] = {}
            for p, seed in zip(params, g.seed):
                by_value.setdefault(str(p[name]), []).append(int(seed))
            if len(by_value) > 1:
                out.append({"suite": suite, "label": label, "param": name, "values": by_value})
    return pd.DataFrame(out, columns=cols)


def summarise(
    runs: pd.DataFrame,
    baselines: dict[str, str] | None = None,
    order: dict[str, list[str]] | None = None,
    references: pd.DataFrame | None = None,
) -> Summary:
    """Aggregate the runs over seeds. Only FINISHED runs count; the others are listed in ``failed``."""
    references = references if references is not None else pd.DataFrame()
    if runs.empty:
        empty = pd.DataFrame()
        return Summary(empty, pd.DataFrame(columns=LONG_COLUMNS), empty, [], reference=references)
    metrics = metric_columns(runs)
    costs = [c for c in COST_COLUMNS if c in runs.columns]
    costs += [c for c in [LATENT_FIT_SECONDS] + [METRIC_SECONDS + m for m in metrics] if c in runs.columns]
    keys = _order(runs, order)
    base = {s: (baselines or {}).get(s) for s, _ in keys}
    for s in base:
        if base[s] not in {lab for su, lab in keys if su == s}:
            base[s] = next(lab for su, lab in keys if su == s)
    models = _model_rows(runs, keys, base)
    values = _seed_values(runs[runs.status == "FINISHED"], metrics + costs)
    long = pd.DataFrame(_long_rows(runs, models, metrics, costs, values, base), columns=LONG_COLUMNS)
    long = _mark_best(long, metrics, runs)
    pooled = _pooled(runs, keys)
    return Summary(models, long, _failed(runs), metrics, costs, references, base, values, pooled)


def _infinite(v: float) -> float:
    """MLflow stores an infinite metric (a lossless codec's PSNR) as the largest float: back to inf."""
    return math.copysign(math.inf, v) if abs(v) >= sys.float_info.max else v


def _capabilities(tags: dict[str, str]) -> frozenset[str] | None:
    """The ``bench.capabilities`` tag of a run (comma-separated); None for a run logged before
    runs recorded it, which is then judged by its family alone."""
    raw = tags.get("bench.capabilities")
    return None if raw is None else frozenset(c for c in raw.split(",") if c)


# --------------------------------------------------------------------------- numbers as text


def fmt_num(x: float | None) -> str:
    """A number for a table: integers with thousands separators, otherwise 4 significant digits;
    an infinity (a lossless codec's PSNR) as ∞."""
    if x is not None and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


def fmt_mean_ci(mean: float, ci: float) -> str:
    """``mean ± ci`` with the interval to two significant digits and the mean to the same decimals;
    ``mean ± 0`` where seeds agree exactly, the mean alone where there is no interval (one seed)."""
    if not math.isfinite(mean):
        return fmt_num(mean)
    if ci == 0:  # two or more seeds, every one the same value: no spread (one seed has no interval)
        return f"{fmt_num(mean)} ± 0"
    if not (math.isfinite(ci) and ci > 0):
        return fmt_num(mean)
    if abs(mean) < 1e-3 and mean != 0 or ci < 1e-6:
        return f"{mean:.3g} ± {ci:.2g}"
    d = max(0, 1 - math.floor(math.log10(ci)))
    return f"{mean:.{d}f} ± {ci:.{d}f}"


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
