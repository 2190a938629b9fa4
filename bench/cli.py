"""`bench run | validate | report | eval | sample | list | ui | relog`: one small handler per verb.

Exit codes: 0 success; 1 some run failed; 2 bad input (suite, data, tracking store), with
nothing written. Heavy imports (torch, mlflow) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bench.files import folder_problem

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2
PLUGINS_HELP = (
    "a folder to import a run's plugin model (module:Class) from; repeatable. Never taken from the "
    "store: a stored run chooses no code to run"
)


def _err(msg: str) -> None:
    from bench.store.tracking import redact_uri  # no credentials in an error line

    print(redact_uri(msg), file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check each suite file; print what it runs and the metrics it reports (exit 2 if any is bad)."""
    from bench.data import DataError, from_config
    from bench.metrics.generative import GenerationEval, generation_names
    from bench.suite import SuiteError, data_errors, expand, load_suite

    rc = EXIT_OK
    for path in args.suite:
        try:
            suite = load_suite(path, args.set)
        except SuiteError as e:
            _err(str(e))
            rc = EXIT_BAD_INPUT
            continue
        e = suite.eval
        n_real = e.n_real
        if args.data:  # the sizes against the real splits, as `bench run` checks them before training
            try:
                data = from_config(suite.dataset)
            except DataError as err:
                _err(f"{path}: dataset: {err}")
                rc = EXIT_BAD_INPUT
                continue
            problems = data_errors(suite, data)
            if problems:
                _err(str(SuiteError(path, problems)))
                rc = EXIT_BAD_INPUT
                continue
            n_real = GenerationEval(data, e, 0, "cpu").reference.n
        n = len(expand(suite))
        print(f"{path}: ok ({len(suite.models)} models x {len(suite.seeds)} seeds = {n} runs)")
        gen = generation_names(e.metrics)
        side = e.inception_pad_to
        pad = f", padded to {side}x{side} for Inception" if side else ""
        where = f" (generation: {e.n_samples} samples vs the first {n_real} {e.reference_split} images{pad})"
        print(f"  metrics: {', '.join(e.metrics)}{where if gen else ''}")
    return rc


class BadInput(Exception):
    """Input that ``bench run`` refuses before writing anything: printed, exit 2."""


def _prepare_run(args: argparse.Namespace):
    """Steps 1-2 of ``bench run``: the suite, the executor, the data, the weights and the store,
    each checked before a run is created. Raises ``BadInput`` after printing why."""

    from bench.data import DataError, from_config
    from bench.store.tracking import Tracker, TrackingError, resolve_uri
    from bench.suite import SuiteError, check_tracking_uri, data_errors, load_suite

    # 1. validate everything before any work
    try:
        suite = load_suite(args.suite, args.set)
    except SuiteError as e:
        _err(str(e))
        raise BadInput from None
    from bench.run.context import device_problem, local_folder_problem

    if args.device:
        problem = device_problem(args.device)
        if problem and (args.executor != "ray" or problem.startswith("device must")):
            _err(f"--device: {problem}")
            raise BadInput from None
        suite = suite.model_copy(update={"device": args.device})
    elif args.executor != "ray":  # Ray's workers may have devices this machine lacks
        problem = device_problem(suite.device)
        if problem:
            _err(f"{args.suite}: device: {problem}")
            raise BadInput from None
    problem = folder_problem(Path(args.out or Path("reports") / suite.name))
    if problem:  # the report is written after training: a folder it cannot be is refused first
        _err(f"--out: {problem}")
        raise BadInput
    from bench.run.driver import make_executor
    from bench.run.executors import ExecutorError

    try:
        executor = make_executor(args.executor, args.jobs, args.ray_address, args.max_retries)
    except ExecutorError as e:
        _err(str(e))
        raise BadInput from None
    uri = resolve_uri(args.tracking_uri, suite.tracking.uri)
    where = _uri_source(args, suite)
    problem = check_tracking_uri(uri)  # the same answer as `bench validate`, whatever gave the URI
    if problem:
        _err(f"{where}: {problem}")
        raise BadInput
    problem = local_folder_problem(uri)  # where checkpoints, journals and the cache go
    if problem:
        _err(problem)
        raise BadInput
    # 2. data and store must be there before a run is created
    try:
        data = from_config(suite.dataset)
    except DataError as e:
        _err(f"{args.suite}: dataset: {e}")
        raise BadInput from None
    problems = data_errors(suite, data)  # the metrics' sizes against the real splits
    if problems:
        _err(str(SuiteError(args.suite, problems)))
        raise BadInput
    from bench.metrics.generative import preflight

    problems = preflight(suite.eval)  # files the requested metrics need (weights), before any run
    for problem in problems:
        _err(f"{args.suite}: eval.metrics: {problem}")
    if problems:
        raise BadInput
    tracker = Tracker(uri, retry_seconds=suite.tracking.retry_seconds)
    try:
        tracker.check()
        tracker.check_writable()
    except TrackingError as e:
        _err(f"{where}: {e}")
        raise BadInput from None
    try:  # the executor (Ray: connected, cluster checked against the store and the resources)
        executor.start(suite, uri)
    except ExecutorError as e:
        _err(f"{args.suite}: {e}" if str(e).startswith("resources:") else str(e))
        raise BadInput from None
    return suite, executor, tracker, uri, where


def cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from bench.run.executors import WorkerLost
    from bench.store.tracking import TrackingError, redact_uri

    # 1-2. validate everything before any work
    try:
        suite, executor, tracker, uri, where = _prepare_run(args)
    except BadInput:
        return EXIT_BAD_INPUT
    from bench.report import terminal_summary, write_report
    from bench.run.context import StoreLost, resolve_device
    from bench.run.driver import run_suite
    from bench.run.progress import default_hooks

    device = resolve_device(suite.device)
    resolved_yaml = yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    try:
        outcomes = run_suite(
            suite,
            resolved_yaml,
            tracker,
            device,
            default_hooks(progress=True),
            restart=args.restart,
            executor=executor,
        )
    except WorkerLost as e:
        _err(str(e))
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        _err(
            "interrupted: the current run is marked KILLED and keeps its checkpoint; finished runs are "
            "kept. Run the same command again to resume."
        )
        return 130
    except StoreLost as e:
        _store_lost_message(e, args, uri)
        return EXIT_RUN_FAILED
    except TrackingError as e:
        _err(f"{where}: {e}")
        return EXIT_BAD_INPUT
    out = Path(args.out or Path("reports") / suite.name)
    summary, paths = write_report(tracker, [suite.name], out)
    print()
    print(terminal_summary(summary))
    _print_report_paths(paths)
    ui_uri = "" if args.tracking_uri is None and suite.tracking.uri is None else f" --tracking-uri '{uri}'"
    print(redact_uri(f"browse the runs: bench ui{ui_uri}"))
    skipped = sum(o.skipped for o in outcomes)
    resumed = sum(bool(o.resumed_from) for o in outcomes)  # from step 0 it is trained, not resumed
    print(
        f"{len(outcomes)} runs: {len(outcomes) - skipped - resumed} trained, {resumed} resumed from a "
        f"checkpoint, {skipped} skipped (finished earlier; --restart trains them again)"
    )
    failed = [o for o in outcomes if o.status != "FINISHED"]
    for o in failed:
        _err(f"run {o.spec.run_name} {o.status}: {o.reason}")
    gaps = [o for o in outcomes if o.status == "FINISHED" and o.failed_metrics]
    for o in gaps:  # finished, its other metrics logged: what is missing and why
        for name, why in o.failed_metrics.items():
            _err(f"run {o.spec.run_name}: metric {name} failed: {why} (traceback: its metric_errors.txt)")
    return EXIT_RUN_FAILED if failed or gaps else EXIT_OK


def _uri_source(args: argparse.Namespace, suite) -> str:
    """Where the tracking URI came from, for error messages."""
    import os

    if args.tracking_uri:
        return "--tracking-uri"
    if suite.tracking.uri:
        return f"{args.suite}: tracking.uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "$MLFLOW_TRACKING_URI"
    return "tracking store (default)"


def _store_lost_message(e, args: argparse.Namespace, uri: str) -> None:
    _err(str(e))
    kept = [o for o in e.outcomes if o.offline]
    for o in kept:
        _err(
            f"run {o.spec.run_name} ({o.status}) went on without the store: its results and checkpoint "
            f"are kept in {o.offline}"
        )
    flag = f" --tracking-uri '{uri}'" if args.tracking_uri else ""
    if kept:
        folders = " ".join(str(o.offline) for o in kept)
        _err(f"when the store answers again, re-log them with: bench relog {folders}{flag}")
        _err(
            "or run the same `bench run` again: it re-logs them itself, skips finished runs and does the rest"
        )
    else:
        _err(
            "nothing is lost: finished runs are in the store; run the same `bench run` again when it answers"
        )


def cmd_relog(args: argparse.Namespace) -> int:
    from bench.store.journal import JOURNAL, read_journal
    from bench.store.relog import JournalError, check_journal, relog
    from bench.store.tracking import Tracker, TrackingError, has_redacted_userinfo, redact_uri

    code = EXIT_OK
    for given in args.folders:
        folder = Path(given)
        if not (folder / JOURNAL).is_file() and (folder / "offline" / JOURNAL).is_file():
            folder = folder / "offline"  # the run folder was given
        try:
            head = read_journal(folder)[0]
            check_journal(folder)  # before the store is touched
        except (OSError, ValueError) as e:
            _err(str(e))
            code = EXIT_BAD_INPUT
            continue
        uri = args.tracking_uri or head["uri"]
        if has_redacted_userinfo(uri):
            _err(
                f"{folder}: the journal's store {uri} needs credentials, which bench never writes to "
                "disk: give it with --tracking-uri"
            )
            code = EXIT_BAD_INPUT
            continue
        tracker = Tracker(uri, retry_seconds=args.retry_seconds)
        try:
            tracker.check()
            run_id = relog(folder, tracker)
        except (TrackingError, JournalError) as e:
            _err(f"{folder}: {e}")
            code = EXIT_BAD_INPUT
            continue
        print(redact_uri(f"{folder}: re-logged into run {run_id} of {uri}"))
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import terminal_summary, write_report
    from bench.store.tracking import Tracker, TrackingError, resolve_uri

    out = Path(args.out or Path("reports") / "+".join(args.suites))
    problem = folder_problem(out)
    if problem:
        _err(f"--out: {problem}")
        return EXIT_BAD_INPUT
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
    summary, paths = write_report(tracker, args.suites, out)
    print(terminal_summary(summary))
    _print_report_paths(paths)
    return EXIT_OK


def _print_report_paths(paths: list[Path]) -> None:
    """Where the report is: the HTML page first (what people open), then the rest."""
    html = next((p for p in paths if p.suffix == ".html"), paths[0])
    print(f"report: {html} (open it in a browser; works offline)")
    print(f"        {', '.join(p.name for p in paths if p != html)} in {html.parent}")
    print("        also logged under report/ of the suite's parent run in the tracking store")


def _bad_plugin_folders(folders: list[str]) -> bool:
    """``--plugins`` folders that are not folders, said (exit 2 follows)."""
    bad = [f for f in folders if not Path(f).expanduser().is_dir()]
    for f in bad:
        _err(f"--plugins {f}: not a folder")
    return bool(bad)


def cmd_eval(args: argparse.Namespace) -> int:
    from bench.data import DataError
    from bench.run.context import resolve_device
    from bench.run.reeval import BadRequest, RunNotFound, evaluate_run, log_references, plan_eval
    from bench.store.tracking import Tracker, TrackingError, resolve_uri
    from bench.suite import SuiteError

    # a stored run keeps the data, models and budget it was trained with: only eval settings change,
    # and where the data is now (checked against the run's own data before anything is computed)
    keys = [s.partition("=")[0] for s in args.set]
    outside = [k for k in keys if k.split(".")[0] != "eval" and k != "dataset.root"]
    for key in outside:
        _err(
            f"--set {key}: bench eval changes eval settings only (--set eval.KEY=VALUE), "
            "and dataset.root where the run's data has moved"
        )
    if outside or _bad_plugin_folders(args.plugins):
        return EXIT_BAD_INPUT
    tracker = Tracker(resolve_uri(args.tracking_uri))
    metrics = [m for item in args.metrics for m in item.split(",") if m] if args.metrics else None
    # 1. every run's request is validated (and its data loaded) before anything is computed
    try:
        tracker.check()
        tracker.check_writable()  # the metrics are logged into the runs: a read-only store computes nothing
        planned = plan_eval(tracker, args.target, metrics, args.set, args.plugins)
    except (TrackingError, RunNotFound, SuiteError, BadRequest) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    except DataError as e:
        _err(f"dataset: {e}")
        return EXIT_BAD_INPUT
    # 2. evaluate and log into the same runs, then each experiment's reference row
    code = EXIT_OK
    try:
        for p in planned:
            failed = {}
            device = resolve_device(args.device or p.suite.device)
            results = evaluate_run(tracker, p.run, p.suite, p.data, device, failed)
            shown = ", ".join(f"{k} {r.value:.4g}" for k, r in results.items()) or "(no metric applies)"
            print(f"{p.run.name} ({p.run.run_id}): {shown}")
            for name, f in failed.items():  # the others are logged; this one is tagged with its reason
                _err(f"run {p.run.name} ({p.run.run_id}): metric {name} failed: {f.reason}\n{f.traceback}")
                code = EXIT_RUN_FAILED
        log_references(tracker, planned, args.device)
    except TrackingError as e:  # the store went away mid-way: the runs keep what they held
        _err(f"{e}\nthe runs keep their status and earlier metrics; run the same `bench eval` again later")
        return EXIT_RUN_FAILED
    return code


def cmd_sample(args: argparse.Namespace) -> int:
    from PIL import Image

    from bench.data import DataError
    from bench.registry import UnknownNameError
    from bench.run.reeval import BadRequest, RunNotFound, sample_grid
    from bench.store.tracking import Tracker, TrackingError, resolve_uri

    out = Path(args.out)
    problem = f"{out} is a folder" if out.is_dir() else folder_problem(out.parent)
    if problem:
        _err(f"--out: {problem}")
    if problem or _bad_plugin_folders(args.plugins):
        return EXIT_BAD_INPUT
    tracker = Tracker(resolve_uri(args.tracking_uri))
    try:
        tracker.check()
        run, grid = sample_grid(
            tracker, args.run_id, args.sampler, args.n, args.seed, args.device, args.plugins
        )
    except (TrackingError, RunNotFound, UnknownNameError, BadRequest) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    except DataError as e:
        _err(f"dataset: {e}")
        return EXIT_BAD_INPUT
    from bench.files import atomic_write

    # whole or not at all: a sample killed while writing leaves the previous file, never a torn one
    kind = Image.registered_extensions().get(out.suffix.lower(), "PNG")
    atomic_write(out, lambda f: Image.fromarray(grid).save(f, format=kind))
    print(f"{args.n} samples of {run.name} ({args.sampler} sampler, seed {args.seed}): {out}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from bench.data import DATASETS
    from bench.metrics import METRICS
    from bench.models import MODELS

    print("datasets:")
    for name in DATASETS:
        print(f"  {name}")
    print("  torchvision:<Class>  (any torchvision image dataset with train/test splits)")
    print("models:")
    for name, entry in MODELS.items():
        print(f"  {name:<12} {entry.family:<4} {entry.description}")
    _list_plugins()
    if getattr(args, "suite", None):
        from bench.suite import SuiteError, expand, load_suite

        try:
            suite = load_suite(args.suite)
        except SuiteError as e:
            _err(str(e))
            return EXIT_BAD_INPUT
        print(f"plugin models of {args.suite}:")
        specs = {s.model: s for s in expand(suite) if s.entry.plugin is not None}
        for name, spec in specs.items():
            e, p = spec.entry, spec.entry.plugin
            print(f"  {name}  {e.family:<4} {e.description}  [from {p.file}, sha256 {p.sha256[:12]}]")
        if not specs:
            print("  (none)")
    print("metrics:")
    for name, m in METRICS.items():
        arrow = "higher" if m.higher_is_better else "lower"
        print(f"  {name:<21} {'/'.join(m.families):<11} {arrow} is better; {m.description}")
    return EXIT_OK


ML_VIEW = "workflowType=machine_learning"  # the MLflow UI's "Model training" view, as a URL parameter


def ui_links(uri: str, host: str, port: int) -> list[tuple[str, str]]:
    """Each experiment's page of training runs in the MLflow UI (its "Model training" view; the UI
    otherwise opens on its GenAI views, which bench never fills). Empty when the store cannot be read."""
    try:
        from mlflow import MlflowClient

        exps = MlflowClient(uri).search_experiments(max_results=100)
    except Exception:  # the UI itself reports an unreadable store
        return []
    base = f"http://{host}:{port}/#/experiments"
    return [
        (e.name, f"{base}/{e.experiment_id}/runs?{ML_VIEW}")
        for e in exps
        if e.name != "Default"
    ]


def _list_plugins() -> None:
    """Models installed through the ``bench.models`` entry points, with where they came from."""
    from bench.models.plugins import ENTRY_POINT_GROUP, PluginError, installed_plugins

    plugins = installed_plugins()
    print(f"plugin models (entry points {ENTRY_POINT_GROUP}; a suite can also name module:Class):")
    if not plugins:
        print("  (none installed)")
    for name, entry in plugins:
        if isinstance(entry, PluginError):
            print(f"  {name:<12} ?    cannot be used: {entry}")
        else:
            print(f"  {name:<12} {entry.family:<4} {entry.description}  [from {entry.origin}]")


def cmd_ui(args: argparse.Namespace) -> int:
    from bench.store.tracking import _artifact_root, redact_uri, resolve_uri

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
    front = f"http://{args.host}:{args.port}/#/experiments?{ML_VIEW}"
    print(redact_uri(f"MLflow UI for {uri} at {front} (Ctrl-C to stop)"))
    for name, url in ui_links(uri, args.host, args.port):
        print(f"  {name}: {url}")
    # MLflow 3's UI keeps its view (GenAI or Model training) in the browser, GenAI until the user
    # switches; a link's workflowType shows that page in the other view without switching
    print('  (these links open the training runs; choose "Model training" at the top left of the UI once, '
          "and the browser keeps it for every page)")
    sys.stdout.flush()  # before the server's own output
    return _serve(cmd)


def _serve(cmd: list[str]) -> int:
    """Run the UI server until it exits, or until Ctrl-C, SIGTERM or SIGHUP reach this process:
    then the server and every process it started (its web workers) are stopped too, so no server
    is left holding the port. The server stays in this process group: a signal to the group
    reaches it directly."""
    import signal
    import subprocess

    import psutil

    def stop(signum, frame):
        raise KeyboardInterrupt

    # handled before the server exists, so that none can outlive this process (no SIGHUP on Windows)
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, stop) for s in signals}
    try:
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            _stop_tree(proc.pid, psutil)
            proc.wait()
            return EXIT_OK
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _stop_tree(pid: int, psutil) -> None:
    """Terminate a process and everything it started; kill what is left after 10 s."""
    try:
        server = psutil.Process(pid)
        procs = [server, *server.children(recursive=True)]
    except psutil.Error:  # already gone
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Comparative benchmarking of generative models.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate every model x seed of a suite")
    r.add_argument("suite")
    r.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the suite's tracking.uri, else $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db)",
    )
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite field")
    r.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides the suite)")
    r.add_argument("--out", help="report folder (default reports/<suite name>)")
    r.add_argument(
        "--restart",
        action="store_true",
        help="train every run from scratch (default: skip finished runs, resume interrupted ones)",
    )
    r.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="run N runs at a time in worker processes on this machine (CPU cores divided between them)",
    )
    r.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local (default: this machine) or ray (each run a Ray task; needs the [ray] extra)",
    )
    r.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to submit to (default: start a local one)"
    )
    r.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="N",
        help=(
            "Ray: times a run lost with its worker or node, or to a tracking-store error, "
            "is started again (default 3)"
        ),
    )
    r.set_defaults(fn=cmd_run)

    rl = sub.add_parser("relog", help="send what runs kept offline (store unreachable) to the store")
    rl.add_argument(
        "folders", nargs="+", metavar="FOLDER", help="a run's offline folder, as printed by bench run"
    )
    rl.add_argument("--tracking-uri", help="where to send it (default: the store the run was writing to)")
    rl.add_argument("--retry-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    rl.set_defaults(fn=cmd_relog)

    v = sub.add_parser("validate", help="check suite files without training")
    v.add_argument("suite", nargs="+", metavar="SUITE")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument(
        "--data",
        action="store_true",
        help="also load each suite's dataset (downloading it if needed) and check the metrics' sizes "
        "against its splits, as bench run does before training",
    )
    v.set_defaults(fn=cmd_validate)

    rep = sub.add_parser("report", help="comparison report of one or more suites, from the tracking store")
    rep.add_argument("suites", nargs="+", metavar="SUITE_NAME")
    rep.add_argument("--tracking-uri")
    rep.add_argument("--out", help="folder (default reports/<suite name>)")
    rep.set_defaults(fn=cmd_report)

    ev = sub.add_parser("eval", help="compute metrics for finished runs, logged into the same runs")
    ev.add_argument("target", metavar="SUITE_NAME|RUN_ID")
    ev.add_argument("--metrics", nargs="+", help="metrics to compute (default: the runs' eval.metrics)")
    ev.add_argument(
        "--set", action="append", default=[], metavar="eval.KEY=VALUE",
        help="override an eval setting (or dataset.root: where the run's data is now)"
    )
    ev.add_argument("--tracking-uri")
    ev.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the run's)")
    ev.add_argument("--plugins", action="append", default=[], metavar="FOLDER", help=PLUGINS_HELP)
    ev.set_defaults(fn=cmd_eval)

    sa = sub.add_parser("sample", help="draw a grid of samples from a finished run")
    sa.add_argument("run_id")
    sa.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("-o", "--out", default="samples.png", help="PNG file (default samples.png)")
    sa.add_argument("--sampler", default="prior", help="prior (default), gmm (ae/vae) or rec (ae/vae)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--tracking-uri")
    sa.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the run's)")
    sa.add_argument("--plugins", action="append", default=[], metavar="FOLDER", help=PLUGINS_HELP)
    sa.set_defaults(fn=cmd_sample)

    ls = sub.add_parser("list", help="registered datasets, models and metrics")
    ls.add_argument("--suite", help="also the module:Class plugin models this suite names, with their files")
    ls.set_defaults(fn=cmd_list)

    ui = sub.add_parser("ui", help="the MLflow UI on the tracking store")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    return p


class _ClosedPipeSafe:
    """Standard output that a reader may close (``bench run ... | head``): what is written after
    it did is dropped, so the command still finishes its work and exits with its own code."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._closed = stream, False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._closed = True
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def release(self) -> None:
        """After a closed pipe: what the stream still buffers goes nowhere, not into an error at exit."""
        if self._closed:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            except (OSError, ValueError, AttributeError):  # not a file descriptor (a test's capture)
                pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from bench.run.memory import keep_freed_memory

    keep_freed_memory()  # this process's batches reuse their memory
    if getattr(args, "tracking_uri", None) is not None and not args.tracking_uri.strip():
        _err("--tracking-uri: empty; give a tracking URI, or leave the flag out for the default store")
        return EXIT_BAD_INPUT
    stdout = sys.stdout
    sys.stdout = safe = _ClosedPipeSafe(stdout)
    try:
        return args.fn(args)
    finally:
        sys.stdout = stdout
        safe.release()


if __name__ == "__main__":
    sys.exit(main())
