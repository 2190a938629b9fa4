"""`bench run | validate | report | list | ui`: one small handler per verb.

Exit codes: 0 success; 1 some run failed; 2 bad input (suite, data, tracking store), with
nothing written. Heavy imports (torch, mlflow) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.suite import SuiteError, load_suite

    try:
        suite = load_suite(args.suite, args.set)
    except SuiteError as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    from bench.suite import expand

    n = len(expand(suite))
    print(f"{args.suite}: ok ({len(suite.models)} models x {len(suite.seeds)} seeds = {n} runs)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from bench.data import DataError, load_dataset
    from bench.suite import SuiteError, load_suite
    from bench.tracking import Tracker, TrackingError, resolve_uri

    # 1. validate everything before any work
    try:
        suite = load_suite(args.suite, args.set)
    except SuiteError as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    if args.device:
        suite = suite.model_copy(update={"device": args.device})
    uri = resolve_uri(args.tracking_uri, suite.tracking.uri)
    # 2. data and store must be there before a run is created
    try:
        load_dataset(
            suite.dataset.name, suite.dataset.root, suite.dataset.train_size, suite.dataset.test_size
        )
    except DataError as e:
        _err(f"{args.suite}: dataset: {e}")
        return EXIT_BAD_INPUT
    tracker = Tracker(uri)
    try:
        tracker.check()
    except TrackingError as e:
        _err(f"{args.suite}: tracking.uri: {e}")
        return EXIT_BAD_INPUT

    from bench.hooks import default_hooks
    from bench.report import markdown_table, write_report
    from bench.runner import resolve_device, run_suite

    device = resolve_device(suite.device)
    resolved_yaml = yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    try:
        outcomes = run_suite(suite, resolved_yaml, tracker, device, default_hooks(progress=True))
    except KeyboardInterrupt:
        _err("interrupted: the current run is marked KILLED; finished runs are kept in the store")
        return 130
    out = Path(args.out or Path("reports") / suite.name)
    summary, paths = write_report(tracker, [suite.name], out)
    print()
    print(markdown_table(summary))
    _print_report_paths(paths)
    ui_uri = "" if args.tracking_uri is None and suite.tracking.uri is None else f" --tracking-uri '{uri}'"
    print(f"browse the runs: bench ui{ui_uri}")
    failed = [o for o in outcomes if o.status != "FINISHED"]
    for o in failed:
        _err(f"run {o.spec.run_name} {o.status}: {o.reason}")
    return EXIT_RUN_FAILED if failed else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import markdown_table, write_report
    from bench.tracking import Tracker, TrackingError, resolve_uri

    tracker = Tracker(resolve_uri(args.tracking_uri))
    try:
        tracker.check()
    except TrackingError as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    missing = [s for s in args.suites if tracker.experiment_id(s, create=False) is None]
    if missing:
        _err(f"no experiment named {', '.join(missing)} in {tracker.uri}")
        return EXIT_BAD_INPUT
    out = Path(args.out or Path("reports") / "+".join(args.suites))
    summary, paths = write_report(tracker, args.suites, out)
    print(markdown_table(summary))
    _print_report_paths(paths)
    return EXIT_OK


def _print_report_paths(paths: list[Path]) -> None:
    """Where the report is: the HTML page first (what people open), then the rest."""
    html = next((p for p in paths if p.suffix == ".html"), paths[0])
    print(f"report: {html} (open it in a browser; works offline)")
    print(f"        {', '.join(p.name for p in paths if p != html)} in {html.parent}")
    print("        also logged under report/ of the suite's parent run in the tracking store")


def cmd_list(args: argparse.Namespace) -> int:
    from bench.data import DATASETS
    from bench.metrics import METRICS
    from bench.models import MODELS

    print("datasets:")
    for name in DATASETS:
        print(f"  {name}")
    print("models:")
    for name, entry in MODELS.items():
        print(f"  {name:<12} {entry.family:<4} {entry.description}")
    print("metrics:")
    for name, m in METRICS.items():
        arrow = "higher" if m.higher_is_better else "lower"
        print(f"  {name:<18} {'/'.join(m.families):<11} {arrow} is better; {m.description}")
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from bench.tracking import _artifact_root, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    root = _artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Comparative benchmarking of generative models.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate every model x seed of a suite")
    r.add_argument("suite")
    r.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the suite's, else sqlite:///mlflow.db)"
    )
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite field")
    r.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides the suite)")
    r.add_argument("--out", help="report folder (default reports/<suite name>)")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check a suite file without training")
    v.add_argument("suite")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(fn=cmd_validate)

    rep = sub.add_parser("report", help="comparison report of one or more suites, from the tracking store")
    rep.add_argument("suites", nargs="+", metavar="SUITE_NAME")
    rep.add_argument("--tracking-uri")
    rep.add_argument("--out", help="folder (default reports/<suite name>)")
    rep.set_defaults(fn=cmd_report)

    ls = sub.add_parser("list", help="registered datasets, models and metrics")
    ls.set_defaults(fn=cmd_list)

    ui = sub.add_parser("ui", help="the MLflow UI on the tracking store")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
