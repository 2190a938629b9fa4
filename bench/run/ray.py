"""``bench run --executor ray [--ray-address ADDR]``: each (model, seed) run is a Ray task.

- Each task asks for the suite's ``resources`` (``cpus``, default 1; ``gpus``, default 0) and
  runs ``bench.run.executors.work``, the same function as a ``--jobs`` worker: it loads the dataset
  as the local executor does (root, ``$BENCH_DATA_DIR``, the Debian folder) and logs to the
  tracking URI given, as a child of the suite's parent run.
- A task lost with its worker or node, or stopped by an error of the tracking store
  (``store_errors``), is retried by Ray (``--max-retries``); a failed or diverged run is an
  outcome, not an error, so it is never retried. The retry continues from the run's
  last checkpoint, which every task also keeps among its run's artifacts in the tracking store
  (a retry on another node reads it from there) and it logs into the same MLflow run.
- Reference statistics, the domain classifier and the converted Inception weights are computed
  once, here in the submitting process, and shared with the workers through the parent run's
  ``cache/`` artifacts.

With a sqlite (or folder) store every task must reach the same file: allowed only when the whole
cluster is this machine; otherwise start ``mlflow server`` with a database backend and give its
``http://`` URI.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bench.config import Suite
from bench.run.context import RunOptions, SuiteEnv
from bench.run.executors import Executor, ExecutorError, Job, Record, WorkerLost, make_jobs, work
from bench.suite import RunSpec

log = logging.getLogger("bench")

INSTALL = "pip install 'bench[ray]' (in a checkout: pip install -e '.[ray]')"
# the environment a task needs from the submitting shell, when it set them
FORWARDED_ENV = (
    "BENCH_DATA_DIR",
    "BENCH_CACHE_DIR",
    "BENCH_HOME",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def _ray_work(job: Job) -> Any:
    return work(job)


def store_errors() -> tuple[type[BaseException], ...]:
    """What a task may raise when the tracking store fails under it (an error the server returned,
    or one it kept failing with past ``tracking.retry_seconds``): the store's fault, not the run's,
    so Ray runs the task again and it continues from the run's checkpoint, in the same MLflow run.
    Anything else a run raises is its own failure, recorded as FAILED and never retried."""
    from mlflow.exceptions import MlflowException

    from bench.store.tracking import TrackingError

    return (MlflowException, TrackingError)


CONNECT_SECONDS = 5.0


def unreachable(address: str | None) -> str | None:
    """Why nothing answers at a Ray address's host and port (``host:port`` or ``ray://host:port``),
    within ``CONNECT_SECONDS``; None when something does, or the address names no port (``auto``,
    none: a local cluster)."""
    if not address or address == "auto":
        return None
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None  # a form this check does not know: Ray's own errors stand
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        return f"nothing answers at {host}:{port} ({e.strerror or e})"
    return None


def _local_addresses() -> set[str]:
    """This machine's addresses, as Ray names nodes."""
    import ray

    names = {"127.0.0.1", "localhost", "::1", socket.gethostname(), ray.util.get_node_ip_address()}
    try:
        names |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return names


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None, max_retries: int = 3) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutorError(
                f"--executor ray: Ray is not installed; install the extra: {INSTALL}"
            ) from None
        if max_retries < 0:
            raise ExecutorError(f"--max-retries: {max_retries} is negative")
        problem = unreachable(address)
        if problem:  # ray.init would retry a dead address for minutes before it gives up
            raise ExecutorError(f"--ray-address {address}: cannot connect to the Ray cluster: {problem}")
        self.address = address
        self.max_retries = max_retries
        self._started = False

    def describe(self) -> str:
        return f"ray({self.address or 'local'})"

    def options(self, restart: bool) -> RunOptions:
        # Ray runs one attempt of a task at a time: a RUNNING run of this config whose task is
        # being run again was abandoned with its worker or node
        return RunOptions(restart=restart, exclusive=True, store_checkpoints=True)

    def start(self, suite: Suite, uri: str) -> None:
        import ray

        from bench.store.tracking import redact_uri, sqlite_path

        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        try:
            ray.init(
                address=self.address,
                runtime_env={"env_vars": env} if env else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--ray-address {self.address}" if self.address else "--executor ray"
            raise ExecutorError(f"{where}: cannot connect to the Ray cluster: {e}") from None
        self._started = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        remote = [n["NodeManagerAddress"] for n in nodes if n["NodeManagerAddress"] not in _local_addresses()]
        local_store = sqlite_path(uri) is not None or "://" not in uri or uri.startswith("file:")
        if local_store and remote:
            self.close()
            raise ExecutorError(
                f"--tracking-uri {redact_uri(uri)}: a local store cannot be shared by the cluster's "
                f"{len(nodes)} nodes "
                f"(e.g. {remote[0]}); start `mlflow server --backend-store-uri postgresql://... "
                "--artifacts-destination s3://...` (or any store every node reaches) and pass its http:// URI"
            )
        if suite.device.startswith("cuda") and suite.resources.gpus == 0:
            self.close()
            raise ExecutorError(
                f"resources.gpus: 0, but the runs are to use {suite.device}: Ray gives a task a GPU "
                "only when it asks for one (set resources.gpus, e.g. 1 or 0.5)"
            )
        have = ray.cluster_resources()
        cpus, gpus = self.cpus(suite), suite.resources.gpus
        if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
            self.close()
            raise ExecutorError(
                f"resources: each run asks for {cpus:g} CPUs and {gpus:g} GPUs; the Ray cluster has "
                f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs in all"
            )

    @staticmethod
    def cpus(suite: Suite) -> float:
        return suite.resources.cpus or 1.0

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()  # disconnects from a cluster; stops the one ray.init started itself
            self._started = False

    def run(self, specs: Sequence[RunSpec], env: SuiteEnv, record: Record) -> None:
        from bench.cache import publish_shared

        suite = env.suite
        try:
            # 1. what every run's evaluation reads (the driver computed it with the reference row),
            # shared through the store
            shared = publish_shared(env.parent)
            # 2. one task per run
            cpus, gpus = self.cpus(suite), suite.resources.gpus
            device = suite.device if suite.device != "auto" else ("cuda" if gpus > 0 else "cpu")
            jobs = make_jobs(specs, env, max(1, int(cpus)), device)
            if shared:
                jobs = [replace(j, shared_cache=env.parent.run_id) for j in jobs]
            task = self.task(cpus, gpus)
            log.info(
                "%d runs as Ray tasks (%g CPUs, %g GPUs each; %d shared cache entries)",
                len(jobs),
                cpus,
                gpus,
                shared,
            )
            self._drive(task, jobs, env, record)
        finally:
            self.close()

    def task(self, cpus: float, gpus: float, fn: Any = _ray_work) -> Any:
        """``fn`` as a Ray task of the given size, retried as the module's docstring says."""
        import ray

        return ray.remote(fn).options(
            num_cpus=cpus,
            num_gpus=gpus,
            max_retries=self.max_retries,
            retry_exceptions=list(store_errors()),
        )

    def _drive(self, task: Any, jobs: list[Job], env: SuiteEnv, record: Record) -> None:
        import ray
        from ray.exceptions import RayError

        from bench.store.tracking import redact_uri, short_reason

        refs = {task.remote(j): j for j in jobs}
        deferred: list[Job] = []
        stopping = False
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            if env.stop() and not stopping:
                stopping = True
                for ref in refs:
                    ray.cancel(ref)  # a running task checkpoints its run and marks it KILLED
            for ref in ready:
                job = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    continue
                except ray.exceptions.RayTaskError as e:  # the task raised (a store error: every try)
                    if stopping:
                        continue
                    cause = e.cause if e.cause is not None else e
                    log.error("%s: the Ray task's error:\n%s", job.spec.run_name, redact_uri(str(e)))
                    tries = self.max_retries + 1 if isinstance(cause, store_errors()) else 1
                    raise WorkerLost(
                        f"{job.spec.run_name}: its Ray task failed "
                        f"{f'{tries} times, the last time ' if tries > 1 else ''}"
                        f"with {type(cause).__name__}: {redact_uri(short_reason(cause))}; "
                        "finished runs are kept: run the same command again"
                    ) from None
                except RayError as e:  # retries used up (worker or node lost each time)
                    if stopping:
                        continue
                    raise WorkerLost(
                        f"{job.spec.run_name}: its Ray task was lost {self.max_retries + 1} times "
                        f"({type(e).__name__}); finished runs are kept: run the same command again"
                    ) from None
                if outcome is None:  # claimed by another process on that node: ask again later
                    deferred.append(replace(job, wait=True))
                elif outcome.status == "KILLED" and not outcome.run_id:
                    stopping = True
                else:
                    record(job.index, outcome)
            if not refs and deferred and not stopping:
                time.sleep(1)
                refs = {task.remote(j): j for j in deferred}
                deferred = []
        if stopping:
            raise KeyboardInterrupt
