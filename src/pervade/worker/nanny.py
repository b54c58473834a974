"""Graceful eviction of workers started by the `dask worker` CLI (what dask-jobqueue runs):
SIGTERM to the nanny drains its worker instead of killing it.

Under a batch system the nanny is the job's own process (the job script `exec`s it), so it
is what Slurm's `--signal=B:TERM@...` and HTCondor's soft kill reach; `scancel --full`
reaches the worker as well. The CLI's own handler would close the nanny, which kills the
worker without a drain. This plugin takes SIGTERM over in the nanny's process, tells the
nanny not to restart its worker, forwards the signal to the worker (whose EvictionPlugin
drains it) and waits for the worker to leave before the nanny closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import threading
from typing import Any

from distributed.diagnostics.plugin import NannyPlugin

PLUGIN_NAME = "pervade-nanny-drain"
REASON = "pervade: evicted (SIGTERM)"

logger = logging.getLogger(__name__)

# One SIGTERM handler per process, shared by its nannies (`dask worker --nworkers N` runs
# several in one event loop, and a loop holds one handler per signal).
_PLUGINS: dict[int, NannyDrainPlugin] = {}


class NannyDrainPlugin(NannyPlugin):
    name = PLUGIN_NAME

    def __init__(self, grace_seconds: float = 60.0) -> None:
        if grace_seconds <= 0:
            raise ValueError(f"grace_seconds must be positive, got {grace_seconds}")
        self.grace_seconds = grace_seconds
        self._nanny: Any = None
        self._drain_task: asyncio.Future[None] | None = None

    def setup(self, nanny: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            # A LocalCluster's nannies live in the client's process, off its main thread:
            # SIGTERM there belongs to the client, and its workers get signals directly.
            logger.debug("pervade: nanny %s is not its process's main thread", nanny.address)
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _on_sigterm)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            logger.warning("pervade: no graceful eviction through nanny %s: %s", nanny.address, exc)
            return
        self._nanny = nanny
        _PLUGINS[id(nanny)] = self

    def teardown(self, nanny: Any) -> None:
        if _PLUGINS.get(id(nanny)) is self:
            del _PLUGINS[id(nanny)]
        if not _PLUGINS:
            with contextlib.suppress(RuntimeError, NotImplementedError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    def start_drain(self) -> None:
        if self._drain_task is None and self._nanny is not None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        nanny = self._nanny
        loop = asyncio.get_running_loop()
        # First, so that the worker's exit is final: a nanny restarts a worker that exits
        # unless it is closing gracefully.
        marked = nanny.close_gracefully(reason=REASON)
        if inspect.isawaitable(marked):  # a coroutine in older distributed releases
            await marked
        pid = nanny.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        logger.info("pervade: nanny %s forwarded SIGTERM to worker pid %s", nanny.address, pid)
        # The worker hands over its results and closes itself (and, through Dask's
        # close_gracefully, this nanny) within its grace period; past it, the batch system
        # kills everything anyway, so the nanny stops waiting then.
        deadline = loop.time() + self.grace_seconds
        while nanny.pid and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await nanny.close(reason=REASON)


def _on_sigterm() -> None:
    for plugin in list(_PLUGINS.values()):
        plugin.start_drain()


__all__ = ["PLUGIN_NAME", "NannyDrainPlugin"]
