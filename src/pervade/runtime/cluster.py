"""Connect to a Dask cluster: an existing scheduler, or the embedded local default."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from pervade.core.churn import ChurnRate
from pervade.runtime.churn import ChurnHarness


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


__all__ = ["WORKER_TTL", "Client", "connect", "worker_environment"]

WORKER_TTL = "25s"


@contextmanager
def connect(
    scheduler: str | None = None,
    workers: int = 2,
    dashboard: bool = False,
    timeout: float = 30.0,
    churn: ChurnRate | None = None,
    grace_seconds: float = 60.0,
) -> Iterator[Client]:
    """A client of `scheduler`, or of a local cluster of `workers` processes that `churn`
    (local only) evicts and replaces while the caller runs."""
    if scheduler:
        if churn is not None:
            raise ValueError("the churn harness drives a local cluster only, not --scheduler")
        client = Client(scheduler, timeout=f"{timeout}s")
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    settings = {
        "distributed.nanny.pre-spawn-environ": worker_environment(workers),
        # A worker that stops answering (frozen, or its node gone without a word) is declared
        # gone after this long without a heartbeat; Dask's default is five minutes.
        "distributed.scheduler.worker-ttl": WORKER_TTL,
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":8787" if dashboard else ":0",
            # Under churn, workers die on purpose: Dask's errors about it are expected noise.
            silence_logs=logging.ERROR if churn is None else logging.CRITICAL,
        )
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
