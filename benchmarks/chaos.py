"""kill -9 a suite at random moments, rerun it until it completes, and compare with an
uninterrupted run of the same suite.

    python benchmarks/chaos.py suites/smoke.yaml --kills 10 --set checkpoint.every=50 --out /tmp/chaos

1. baseline: `bench run SUITE` on a fresh sqlite store, uninterrupted;
2. chaos: `bench run SUITE` on another fresh store, killed with SIGKILL at a random moment
   after it starts training a run (uniform over the baseline's mean wall time per run: in that
   run, the next one, or the report), again and again, ``--kills`` times; then run to
   completion;
3. compare, for every (model, seed): exactly one FINISHED run in the chaos store, and its final
   metrics and whole metric histories (losses, evaluations) equal to the baseline's.

Both stores run with one intra-op thread (OMP_NUM_THREADS=1) so CPU results are comparable.
Prints a summary; exit status 0 when nothing was lost, duplicated or changed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


SETS: list[str] = []


def bench_run(suite: str, uri: str, out: Path) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return [sys.executable, "-m", "bench.cli", "run", suite, "--tracking-uri", uri, "--out", str(out), *sets]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def child_runs(uri: str, suite_name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite_name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'", max_results=10000)


def histories(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    keys = [k for k in run.data.metrics if not k.startswith("system/") and k not in VOLATILE]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in keys}


# what differs between two runs of the same config by nature (time, memory)
VOLATILE = {"train_seconds", "images_per_s", "peak_memory_mb"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/bench-chaos")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to bench run")
    args = ap.parse_args()
    SETS.extend(args.set)

    sys.path.insert(0, str(REPO))
    from bench.suite import load_suite

    suite_name = load_suite(args.suite, args.set).name
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty")
    base_uri = f"sqlite:///{out / 'base' / 'mlflow.db'}"
    uri = f"sqlite:///{out / 'chaos' / 'mlflow.db'}"
    rng = random.Random(args.seed)

    t0 = time.monotonic()
    base = subprocess.run(
        bench_run(args.suite, base_uri, out / "base-report"), env=env(), capture_output=True
    )
    wall = time.monotonic() - t0
    if base.returncode != 0:
        sys.exit(f"baseline failed:\n{base.stderr.decode()}")
    print(f"baseline: {wall:.0f} s wall")

    n_runs = len(child_runs(base_uri, suite_name))
    per_run = wall / n_runs
    kills = []
    while len(kills) < args.kills:
        proc = subprocess.Popen(
            bench_run(args.suite, uri, out / "chaos-report"),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = threading.Event()

        def watch(stream=proc.stderr, started=started):
            # "[i/n] label/seedK" opens a run; "... skipped (finished earlier)" does not train
            for line in stream:
                if re.match(r"^\[\d+/\d+\] \S+$", line.strip()):
                    started.set()

        threading.Thread(target=watch, daemon=True).start()
        while not started.wait(0.05) and proc.poll() is None:
            pass
        delay = rng.uniform(0, per_run)  # somewhere in this run, or the next, or the report
        try:
            proc.wait(timeout=delay)
            print(f"  the suite completed before the kill ({delay:.1f} s after a run started)")
            if proc.returncode == 0:
                break
            continue
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        runs = child_runs(uri, suite_name)
        state = {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "RUNNING", "KILLED")}
        kills.append((delay, state))
        print(f"  kill {len(kills)}, {delay:4.1f} s after a run started: runs in the store {state}")

    final = subprocess.run(bench_run(args.suite, uri, out / "chaos-report"), env=env(), capture_output=True)
    if final.returncode != 0:
        print(final.stderr.decode())
        return 1

    problems = []
    base_runs = {r.data.tags["bench.config_hash"]: r for r in child_runs(base_uri, suite_name)}
    chaos = child_runs(uri, suite_name)
    resumed = sum(int(r.data.tags.get("bench.resumed_from_step", 0)) > 0 for r in chaos)
    again = sum(r.data.tags.get("bench.resumed_from_step") == "0" for r in chaos)
    for h, b in base_runs.items():
        done = [r for r in chaos if r.data.tags.get("bench.config_hash") == h and r.info.status == "FINISHED"]
        if len(done) != 1:
            problems.append(f"{b.info.run_name}: {len(done)} finished runs")
            continue
        hb, hc = histories(base_uri, b), histories(uri, done[0])
        for k in hb:
            if hb[k] != hc.get(k):
                problems.append(f"{b.info.run_name}: {k} differs")
    during_training = sum(s["RUNNING"] > 0 for _, s in kills)
    print(
        f"{len(kills)} kills ({during_training} while a run was training); {resumed} runs resumed from a "
        f"checkpoint, {again} trained again from step 0 (killed before their first checkpoint); "
        f"{len(chaos)} runs in the store for {len(base_runs)} in the suite; compared with the baseline: "
        f"{len(problems)} lost, duplicated or changed"
    )
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
