"""Sending a task, a context build or a prefetch to one named worker, or a worker to be
restarted."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading

from distributed import Client, Future

from pervade.core import Item
from pervade.core.context import ContextSpec
from pervade.runtime.job import Job
from pervade.worker.prefetch import prefetch_context
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


def submit_stage(
    client: Client, spec: ContextSpec, worker: str
) -> concurrent.futures.Future[str | None]:
    """Ask `worker` to stage `spec`'s artifacts in the background. Through `Client.run`, so
    it neither waits behind the worker's queued tasks nor takes a task slot; on a thread of
    its own, so the driver goes on meanwhile. The future holds what `prefetch_context`
    returned (None: a copy started), or its error."""
    future: concurrent.futures.Future[str | None] = concurrent.futures.Future()

    def stage() -> None:
        try:
            answers = client.run(prefetch_context, spec, workers=[worker])
            if worker not in answers:
                raise RuntimeError(f"worker {worker} did not answer the prefetch")
            future.set_result(answers[worker])
        except Exception as exc:  # the worker may be gone, or cannot prefetch
            future.set_exception(exc)

    # A daemon thread: a driver closing does not wait on a worker that went away.
    threading.Thread(target=stage, name="pervade-stage", daemon=True).start()
    return future


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
