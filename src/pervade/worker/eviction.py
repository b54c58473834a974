"""Graceful eviction: on SIGTERM a worker stops taking work, cuts its running task short at
the next slice, lets the driver collect what it finished, and leaves within its grace period.

HTCondor, Slurm (with --signal) and spot machines send SIGTERM ahead of the kill; the grace
period is the time between the two that the batch system promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Hashable, Iterable
from typing import Any

from distributed import WorkerPlugin

from pervade.worker.plugin import context_host

DRAIN_TOPIC = "pervade-drain"
PLUGIN_NAME = "pervade-eviction"

logger = logging.getLogger(__name__)


# Dask's states of a task whose function has not yet returned its result to the worker.
_RUNNING = frozenset({"executing", "long-running"})


def computing(worker: Any, keys: Iterable[Hashable]) -> bool:
    """Whether any of the tasks `keys` still runs on `worker`, as Dask sees it."""
    tasks = worker.state.tasks
    return any(
        (task := tasks.get(key)) is not None and task.state in _RUNNING for key in list(keys)
    )


class EvictionPlugin(WorkerPlugin):
    name = PLUGIN_NAME

    def __init__(self, grace_seconds: float = 60.0) -> None:
        if grace_seconds <= 0:
            raise ValueError(f"grace_seconds must be positive, got {grace_seconds}")
        self.grace_seconds = grace_seconds
        self._worker: Any = None
        self._drain_task: asyncio.Future[None] | None = None

    def setup(self, worker: Any) -> None:
        self._worker = worker
        try:
            # The worker's event loop runs in its process's main thread, the only one that
            # may take signals.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.start_drain)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            logger.warning("pervade: no graceful eviction on %s: %s", worker.address, exc)

    def teardown(self, worker: Any) -> None:
        with contextlib.suppress(RuntimeError, NotImplementedError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    def start_drain(self) -> None:
        if self._drain_task is not None or self._worker is None:
            return
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        worker = self._worker
        loop = asyncio.get_running_loop()
        host = context_host(worker)
        host.draining.set()
        worker.log_event(DRAIN_TOPIC, {"worker": worker.address, "grace": self.grace_seconds})
        # Wait for the tasks that are computing items (each stops at its next slice) until
        # Dask holds their reports: a function that has returned is not yet a result the
        # driver can collect. A load task (a context build alone) holds no finished work:
        # not waited for. A fifth of the grace period is kept for handing results over and
        # closing.
        deadline = loop.time() + 0.8 * self.grace_seconds
        while computing(worker, host.started_tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Then for the driver to collect the reports (it lets go of each once it has it), so
        # that nothing finished depends on the hand-over below, which a loaded machine can
        # get wrong.
        while len(worker.data) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Retirement hands any result still held here to another worker, so the driver can
        # still collect it; then the worker and its nanny close without waiting for a
        # context build that would only be thrown away.
        await worker.scheduler.retire_workers(
            workers=[worker.address],
            close_workers=False,
            remove=True,
            stimulus_id=f"pervade-drain-{loop.time()}",
        )
        await worker.close(nanny=True, executor_wait=False, reason="pervade: evicted (SIGTERM)")
