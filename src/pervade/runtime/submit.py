"""Sending a task or a context build to one named worker."""

from __future__ import annotations

from distributed import Client, Future

from pervade.core import Item
from pervade.runtime.job import Job
from pervade.worker.tasks import TaskReport, load_context, run_task


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
