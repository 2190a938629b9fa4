"""How long the quick commands take, from process start to exit: `bench --help`, `bench list`
and `bench validate`, each in a fresh interpreter, and which heavy libraries they import.

    python benchmarks/startup.py                          # this checkout, median of 5
    python benchmarks/startup.py --against /tmp/old       # and another checkout, alternately

With ``--against`` every command runs in turn in each source tree (its folder and PYTHONPATH), so both see
the same machine load; the table gives each median and their ratio. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "bench --help": ["--help"],
    "bench list": ["list"],
    "bench validate suites/smoke.yaml": ["validate", "suites/smoke.yaml"],
}
HEAVY = ("torchvision", "torch_fidelity", "torchmetrics", "torch._dynamo", "mlflow", "pandas")
PROBE = (
    "import sys, contextlib, io\n"
    "from bench.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main(sys.argv[1:])\n"
    f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
)


def timed(tree: Path, args: list[str]) -> tuple[float, str]:
    """Wall seconds of ``bench <args>`` run from ``tree``'s sources, and the heavy modules it imported."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    if out.returncode not in (0,):
        raise SystemExit(f"bench {' '.join(args)} ({tree}) exited {out.returncode}:\n{out.stderr}")
    return seconds, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", type=Path, help="another checkout to time alternately")
    a = ap.parse_args()
    trees = [REPO] + ([a.against.resolve()] if a.against else [])
    rows = []
    for label, args in COMMANDS.items():
        times: dict[Path, list[float]] = {t: [] for t in trees}
        mods: dict[Path, str] = {}
        for _ in range(a.repeats):
            for t in trees:
                s, m = timed(t, args)
                times[t].append(s)
                mods[t] = m
        rows.append((label, {t: statistics.median(v) for t, v in times.items()}, mods))
    head = ["command", "this checkout: s", "heavy imports"]
    if a.against:
        head += [f"{a.against}: s", "heavy imports", "ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, med, mods in rows:
        cells = [label, f"{med[REPO]:.2f}", mods[REPO] or "none"]
        if a.against:
            other = trees[1]
            cells += [f"{med[other]:.2f}", mods[other] or "none", f"{med[other] / med[REPO]:.2f}x"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
