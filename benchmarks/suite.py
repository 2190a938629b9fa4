"""Where the time of a whole suite goes: `bench run` through the real CLI, in a temp store.

Prints markdown tables. The split comes from the cost metrics each run logs: on the suite run
``data_seconds`` and ``suite_seconds``; on each model run ``train_seconds``, ``eval_seconds``,
``tracking_seconds``, ``checkpoint_seconds`` and ``wall_seconds``. A metric the store does not
hold is printed as n/a. The process wall time (interpreter start, imports and the report
included) is measured here, around the command.

    python benchmarks/suite.py                                   # suites/smoke.yaml, split of its time
    python benchmarks/suite.py suites/fashion-mnist.yaml --set budget.steps=20
    python benchmarks/suite.py --scale                           # 1, 2 and 4 seeds: time against runs
    python benchmarks/suite.py --executors local,jobs=2,ray      # the same suite under each executor

Each `bench run` gets a fresh store and run folders in a temp folder; the bench cache
(classifiers, reference features) is the user's unless ``--cold-cache`` gives it a temp one too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's bench, here and in the `bench run` it starts
RUN_PARTS = [  # (row, metric on each model run)
    ("training", "train_seconds"),
    ("evaluation", "eval_seconds"),
    ("tracking", "tracking_seconds"),
    ("checkpointing", "checkpoint_seconds"),
]


@dataclass
class SuiteTiming:
    """One `bench run`: its exit code, the process wall time and the cost metrics in its store."""

    rc: int
    process_seconds: float
    n_runs: int = 0
    suite: dict[str, float] = field(default_factory=dict)  # the suite run's metrics
    runs: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (label, metrics) per run
    output: str = ""

    def total(self, key: str) -> float | None:
        """A metric summed over the model runs; None when a run lacks it."""
        values = [m.get(key) for _, m in self.runs]
        if not values or any(v is None for v in values):
            return None
        return float(sum(values))

    @property
    def seconds(self) -> float:
        """The suite's time on bench's clock when logged, else the process wall time."""
        return self.suite.get("suite_seconds", self.process_seconds)


def run_suite(suite: str, sets: list[str], executor: list[str] | None, cold_cache: bool) -> SuiteTiming:
    """`bench run` in a subprocess, with a fresh store in a temp folder; reads its metrics back."""
    from bench.store.tracking import Tracker
    from bench.suite import load_suite

    suite = str(Path(suite).resolve())  # the command runs in the temp folder
    name = load_suite(suite, sets).name
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        env = {**os.environ, "BENCH_HOME": f"{tmp}/home", "PYTHONPATH": _pythonpath()}
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if cold_cache:
            env["BENCH_CACHE_DIR"] = f"{tmp}/cache"
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "-m", "bench.cli", "run", suite, "--tracking-uri", uri]
        cmd += ["--out", f"{tmp}/report"]
        for s in sets:
            cmd += ["--set", s]
        cmd += executor or []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        timing = SuiteTiming(proc.returncode, time.perf_counter() - t0, output=proc.stdout + proc.stderr)
        if proc.returncode not in (0, 1):  # 1: some run failed; the others still have their costs
            return timing
        tracker = Tracker(uri)
        parent = tracker.latest_suite_run(name)
        if parent is not None:
            timing.suite = dict(parent.data.metrics)
            pid = parent.info.run_id
            mine = [r for r in tracker.runs(name) if r.data.tags.get("mlflow.parentRunId") == pid]
            children = sorted(mine, key=lambda r: r.info.start_time)
            timing.runs = [(r.data.tags.get("label", "?"), dict(r.data.metrics)) for r in children]
            timing.n_runs = len(children)
        return timing


def _pythonpath() -> str:
    """This checkout first, so the subprocess runs the same bench as this script."""
    rest = os.environ.get("PYTHONPATH")
    return f"{REPO}{os.pathsep}{rest}" if rest else str(REPO)


def fmt(v: float | None, unit: str = " s") -> str:
    return "n/a" if v is None else f"{v:,.1f}{unit}"


def share(v: float | None, total: float | None) -> str:
    return "n/a" if v is None or not total else f"{100 * v / total:.1f}%"


def split_table(t: SuiteTiming, parallel: bool = False) -> list[str]:
    """Where the suite's time went: data, training, evaluation, tracking, checkpoints, other."""
    total = t.suite.get("suite_seconds")
    data = t.suite.get("data_seconds")
    parts = [("data loading", data)] + [(row, t.total(key)) for row, key in RUN_PARTS]
    known = [v for _, v in parts]
    other = None
    if total is not None and all(v is not None for v in known) and not parallel:
        other = total - sum(known)  # model building, artifacts, grids, the reference row
    rows = ["| part | seconds | share of the suite |", "|---|---|---|"]
    rows += [f"| {row} | {fmt(v)} | {share(v, total)} |" for row, v in parts]
    if parallel:
        rows.append("| other | n/a (runs overlap: the parts are sums over runs) | |")
    else:
        rows.append(f"| other | {fmt(other)} | {share(other, total)} |")
    rows.append(f"| suite (`suite_seconds`) | {fmt(total)} | {'100%' if total else 'n/a'} |")
    rows.append(f"| process wall (start-up, imports, report included) | {fmt(t.process_seconds)} | |")
    return rows


def per_model_table(t: SuiteTiming) -> list[str]:
    labels = list(dict.fromkeys(label for label, _ in t.runs))
    keys = ["wall_seconds"] + [key for _, key in RUN_PARTS]
    rows = [
        "| model | runs | run wall | training | evaluation | tracking | checkpointing | img/s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        ms = [m for lab, m in t.runs if lab == label]
        sums = []
        for key in keys:
            vals = [m.get(key) for m in ms]
            sums.append(None if any(v is None for v in vals) else sum(vals))
        rates = sorted(m["images_per_s"] for m in ms if "images_per_s" in m)
        rate = f"{rates[len(rates) // 2]:,.0f}" if rates else "n/a"
        rows.append(f"| {label} | {len(ms)} | {' | '.join(fmt(v) for v in sums)} | {rate} |")
    return rows


def machine_line() -> str:
    import torch

    from bench.run.threads import available_cores

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {available_cores()} CPU cores available, torch {torch.__version__}, "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, "
        f"load average {load} (1/5/15 min)"
    )


def failed(t: SuiteTiming, what: str) -> list[str]:
    tail = "\n".join(t.output.strip().splitlines()[-15:])
    return [f"`{what}` exited {t.rc}:", "", "```", tail, "```"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default=str(REPO / "suites" / "smoke.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to bench run")
    ap.add_argument("--scale", action="store_true", help="run with 1, 2 and 4 seeds: time against runs")
    ap.add_argument(
        "--executors", help="comma-separated: local, jobs=N (`--jobs N`), ray (Ray on this machine)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="--scale: runs per point (the median is shown)")
    ap.add_argument("--cold-cache", action="store_true", help="a temp bench cache (classifier, features)")
    args = ap.parse_args(argv)

    from bench.suite import SuiteError, load_suite

    try:
        load_suite(args.suite, args.set)  # bad input stops here, before any `bench run`
    except SuiteError as e:
        print(e, file=sys.stderr)
        return 2
    print(machine_line(), "\n")
    print(f"suite: {args.suite}" + (f", --set {' --set '.join(args.set)}" if args.set else ""), "\n")
    if args.scale:
        return scale(args)
    if args.executors:
        return executors(args)
    t = run_suite(args.suite, args.set, None, args.cold_cache)
    if t.rc not in (0, 1):
        print("\n".join(failed(t, "bench run")))
        return 1
    print(f"### Where the time went ({t.n_runs} runs)\n")
    print("\n".join(split_table(t)), "\n")
    print("### Per model (sums over seeds)\n")
    print("\n".join(per_model_table(t)))
    return 0


SEEDS = {1: "[0]", 2: "[0, 1]", 4: "[0, 1, 2, 3]"}


def scale(args: argparse.Namespace) -> int:
    """Suite time against the number of runs: 1, 2 and 4 seeds of every model."""
    points = []
    rows = ["| seeds | runs | suite (s) | process wall (s) | s per run | added s per added run |"]
    rows.append("|---|---|---|---|---|---|")
    for seeds, value in SEEDS.items():
        tries = []
        for _ in range(args.repeats):
            t = run_suite(args.suite, [*args.set, f"seeds={value}"], None, args.cold_cache)
            if t.rc not in (0, 1):
                print("\n".join(failed(t, f"bench run --set seeds={value}")))
                return 1
            tries.append(t)
        t = sorted(tries, key=lambda t: t.seconds)[len(tries) // 2]  # the median try
        marginal = ""
        if points:
            runs0, s0 = points[-1]
            marginal = f"{(t.seconds - s0) / (t.n_runs - runs0):,.1f}" if t.n_runs > runs0 else "n/a"
        points.append((t.n_runs, t.seconds))
        rows.append(
            f"| {seeds} | {t.n_runs} | {fmt(t.suite.get('suite_seconds'), '')} | "
            f"{t.process_seconds:,.1f} | {t.seconds / max(t.n_runs, 1):,.1f} | {marginal} |"
        )
    print(f"### Suite time against the number of runs (median of {args.repeats} tries per point)\n")
    print("\n".join(rows), "\n")
    print(linearity(points))
    return 0


def linearity(points: list[tuple[int, float]]) -> str:
    """Least-squares line through (runs, seconds) and how far the points stray from it."""
    n = len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return "linearity: n/a (every point has the same number of runs)"
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    fixed = my - slope * mx
    worst = max(abs(y - (fixed + slope * x)) / y for x, y in zip(xs, ys))
    verdict = "linear" if worst <= 0.10 else "not linear"
    return (
        f"fit: {fixed:,.1f} s fixed + {slope:,.1f} s per run; largest deviation from the line "
        f"{100 * worst:.1f}% of the point: {verdict} (within 10%)"
    )


EXECUTOR_ARGS = {"local": [], "ray": ["--executor", "ray"]}


def executor_args(name: str) -> list[str]:
    if name.startswith("jobs="):
        return ["--jobs", name.removeprefix("jobs=")]
    return EXECUTOR_ARGS[name]


def executors(args: argparse.Namespace) -> int:
    """The same suite under each executor: suite time, and the training summed over runs."""
    names = args.executors.split(",")
    for name in names:
        if not name.startswith("jobs=") and name not in EXECUTOR_ARGS:
            print(f"--executors: {name!r} is not local, jobs=N or ray", file=sys.stderr)
            return 2
    rows = ["| executor | runs | suite (s) | process wall (s) | training, summed over runs (s) | speed-up |"]
    rows.append("|---|---|---|---|---|---|")
    base = None
    for name in names:
        t = run_suite(args.suite, args.set, executor_args(name), args.cold_cache)
        if t.rc not in (0, 1):
            print("\n".join(failed(t, f"bench run {' '.join(executor_args(name))}")))
            return 1
        base = base or t.seconds
        rows.append(
            f"| {name} | {t.n_runs} | {fmt(t.suite.get('suite_seconds'), '')} | {t.process_seconds:,.1f} | "
            f"{fmt(t.total('train_seconds'), '')} | {base / t.seconds:.2f}× |"
        )
    print("### One suite, several executors\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
