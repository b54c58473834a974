"""Sending a task or a context build to one named worker, or a worker to be restarted."""

from __future__ import annotations

import contextlib
import logging
import threading

from distributed import Client, Future

from pervade.core import Item
from pervade.runtime.job import Job
from pervade.worker.tasks import TaskReport, load_context, run_task

logger = logging.getLogger(__name__)


def submit_task(
    client: Client, job: Job, key: str, worker: str, items: list[Item]
) -> Future[TaskReport]:
    # Pinned to its worker: if that worker goes, the dispatcher requeues the items itself
    # (Dask must not move or retry the task behind its back).
    return client.submit(
        run_task,
        job.context,
        job.function,
        dict(job.options),
        items,
        key=key,
        workers=[worker],
        allow_other_workers=False,
        pure=False,
        retries=0,
    )


def submit_load(client: Client, job: Job, key: str, worker: str) -> Future[float]:
    return client.submit(
        load_context,
        job.context,
        key=key,
        workers=[worker],
        allow_other_workers=False,
        pure=False,
        retries=0,
    )


def restart_worker(client: Client, worker: str, reason: str) -> None:
    """Ask the worker's nanny for a new process, on a thread of its own so the caller goes
    on meanwhile. A worker that cannot be restarted (it has no nanny) is retired instead:
    its process is unusable."""

    def restart() -> None:
        try:
            status = client.restart_workers([worker], raise_for_error=False)
            if status.get(worker) == "OK":
                return
        except Exception as exc:  # the worker may be gone already
            logger.warning("pervade: restarting %s failed: %r", worker, exc)
        with contextlib.suppress(Exception):
            client.retire_workers([worker], close_workers=True)

    logger.warning("pervade: restarting worker %s: %s", worker, reason)
    threading.Thread(target=restart, name="pervade-restart", daemon=True).start()
