"""Connect to a Dask cluster: an existing scheduler, worker jobs of a batch system, or the
embedded local default."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.utils import get_mp_context

from pervade.core.availability import Churn
from pervade.runtime.batch import LOST_WORKER_TIMEOUT, BatchConfig, SlurmJobKeeper, slurm_cluster
from pervade.runtime.churn import ChurnHarness
from pervade.runtime.membership import register_plugin
from pervade.worker.nanny import NannyDrainPlugin


def worker_environment(workers: int, cores: int | None = None) -> dict[str, int]:
    """Environment for local worker processes: the cores split evenly between workers.

    Dask's nanny also sets MALLOC_TRIM_THRESHOLD_ by default; that made torch inference in
    workers nearly twice as slow as in one process (memory returned to the OS and
    re-faulted on every batch), so pervade's workers run without it.
    """
    per_worker = max(1, (cores or os.cpu_count() or 1) // max(1, workers))
    return {
        "OMP_NUM_THREADS": per_worker,
        "MKL_NUM_THREADS": per_worker,
        "OPENBLAS_NUM_THREADS": per_worker,
    }


__all__ = [
    "TTL_CHECK_SECONDS",
    "WORKER_TTL",
    "Client",
    "SchedulerUnreachable",
    "check_heartbeats_often",
    "connect",
    "register_nanny_drain",
    "worker_environment",
]

# A worker that stops answering (frozen, or its node gone without a word) is declared gone
# once it has sent no heartbeat for this long; Dask's default is five minutes. Dask uses at
# least ten heartbeat intervals, which it lengthens on large clusters (0.5 s up to 10
# workers, 1 s up to 50, 2 s up to 200, then 1 s more per 200 workers).
WORKER_TTL = "15s"
# Dask checks for silent workers only once per TTL, which would let a frozen worker go
# unnoticed for up to twice the TTL; schedulers that pervade starts check every second, so a
# frozen worker is declared gone about 15 s after its last heartbeat (20 s on 50 to 199
# workers), and its nanny kills it 4 s later at most.
TTL_CHECK_SECONDS = 1.0

logger = logging.getLogger(__name__)


class SchedulerUnreachable(Exception):
    """The scheduler named with `--scheduler` did not answer: nothing has run."""


def check_heartbeats_often(cluster: Any) -> None:
    """Have the in-process scheduler of `cluster` look for silent workers every
    TTL_CHECK_SECONDS instead of once per TTL."""
    check = getattr(getattr(cluster, "scheduler", None), "periodic_callbacks", {}).get("worker-ttl")
    if check is None:
        logger.warning("pervade: no worker-ttl check on this scheduler to run more often")
        return

    def reschedule() -> None:
        check.stop()
        check.callback_time = TTL_CHECK_SECONDS * 1000
        check.start()

    cluster.loop.add_callback(reschedule)


@contextmanager
def connect(
    scheduler: str | None = None,
    workers: int = 2,
    dashboard: bool = False,
    timeout: float = 30.0,
    churn: Churn | None = None,
    grace_seconds: float = 60.0,
    batch: BatchConfig | None = None,
    preload: Sequence[str] = (),
) -> Iterator[Client]:
    """A client of `scheduler`, of worker jobs of a batch system (`batch`), or of a local
    cluster of `workers` processes that `churn` (local only) evicts and replaces while the
    caller runs. Local workers are forked from a server that has imported `preload`."""
    if (scheduler or batch) and churn is not None:
        raise ValueError("the churn harness drives a local cluster only")
    if scheduler and batch:
        raise ValueError("a batch cluster brings its own scheduler: drop --scheduler")
    if batch is not None:
        with _batch_client(batch, dashboard, timeout) as client:
            yield client
        return
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachable(
                f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s: {exc}"
            ) from exc
        try:
            # Its workers may be `dask worker` processes under a batch system.
            register_nanny_drain(client, grace_seconds)
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    settings = {
        "distributed.nanny.pre-spawn-environ": worker_environment(workers),
        "distributed.scheduler.worker-ttl": WORKER_TTL,
        "distributed.worker.multiprocessing-method": "forkserver",
    }
    with dask.config.set(settings):
        _preload_forkserver(preload)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":8787" if dashboard else ":0",
            # Under churn, workers die on purpose: Dask's errors about it are expected noise.
            silence_logs=logging.ERROR if churn is None else logging.CRITICAL,
        )
        check_heartbeats_often(cluster)
        client = Client(cluster, timeout=f"{timeout}s")
        try:
            if churn is None:
                yield client
            else:
                with ChurnHarness(cluster, client, churn, workers, grace_seconds):
                    yield client
        finally:
            client.close()
            cluster.close()


def _preload_forkserver(modules: Sequence[str]) -> None:
    """Have the server that forks local worker processes import `modules` (the job's loader
    and function, and through them torch and transformers) once, ahead of the first worker.

    A worker that replaces an evicted or restarted one is then a fork of a process that has
    done its imports: it becomes useful in a second or two instead of 10-15 s. The server
    starts with the first worker and lives as long as this process; a module it cannot
    import is skipped, and the worker imports it itself.
    """
    get_mp_context().set_forkserver_preload(
        ["distributed", "pervade.worker.plugin", "pervade.worker.tasks", *modules]
    )


def register_nanny_drain(client: Client, grace_seconds: float) -> None:
    """Make SIGTERM to the nanny of a `dask worker` process drain its worker (see
    pervade.worker.nanny); nannies of a LocalCluster leave it unused."""
    register_plugin(client, NannyDrainPlugin(grace_seconds))


@contextmanager
def _batch_client(batch: BatchConfig, dashboard: bool, timeout: float) -> Iterator[Client]:
    settings = {
        "distributed.scheduler.worker-ttl": WORKER_TTL,
        # A requeued job's worker comes back under its old name; Dask's 15 s would have
        # cancelled the job by then.
        "distributed.deploy.lost-worker-timeout": LOST_WORKER_TIMEOUT,
    }
    # The settings are read while the cluster runs (a worker lost, a heartbeat missed),
    # so they stay set until it is closed.
    with dask.config.set(settings):
        cluster = slurm_cluster(batch, dashboard)
        check_heartbeats_often(cluster)
        keeper = SlurmJobKeeper(cluster, batch.jobs)
        try:
            client = Client(cluster, timeout=f"{timeout}s")
            try:
                register_nanny_drain(client, batch.grace_seconds)
                cluster.scale(jobs=batch.jobs)
                keeper.start()
                yield client
            finally:
                keeper.stop()
                client.close()
        finally:
            cluster.close()
