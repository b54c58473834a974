"""The Dask WorkerPlugin that holds a worker's contexts and reports their states."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from distributed import WorkerPlugin, get_worker

from pervade.core.states import ContextState
from pervade.storage.cache import ArtifactCache
from pervade.worker.context_host import ContextHost, LoadInfo

PLUGIN_NAME = "pervade-context-host"
STATE_TOPIC = "pervade-context-state"

# One host per worker process, kept outside the plugin object: a driver that reconnects
# registers the plugin again, and Dask then replaces the plugin instance. The contexts
# it built must survive that.
_HOSTS: dict[str, ContextHost] = {}
logger = logging.getLogger(__name__)


class ContextHostPlugin(WorkerPlugin):
    """`cache_dir` and `cache_limit` (bytes, or a size such as "50GB") set the worker's
    artifact cache; unset, they come from PERVADE_ARTIFACT_CACHE and
    PERVADE_ARTIFACT_CACHE_LIMIT in the worker's environment, else the defaults."""

    name = PLUGIN_NAME

    def __init__(self, cache_dir: str | None = None, cache_limit: int | str | None = None) -> None:
        self.host: ContextHost | None = None
        self.cache_dir = cache_dir
        self.cache_limit = cache_limit

    def setup(self, worker: Any) -> None:
        address = str(worker.address)

        def notify(
            context: str, state: ContextState, seconds: float | None, load: LoadInfo | None
        ) -> None:
            message: dict[str, Any] = {
                "worker": address,
                "context": context,
                "state": state.value,
                "load_seconds": seconds,
            }
            if load is not None:
                message["tier"] = None if load.tier is None else load.tier.value
                message["bytes"] = load.bytes
                message["fetch_seconds"] = load.fetch_seconds
            # A closing worker cannot report; its states die with it.
            with contextlib.suppress(Exception):
                worker.log_event(STATE_TOPIC, message)

        host = _HOSTS.get(address)
        if host is None:
            host = _HOSTS[address] = ContextHost(notify, report_use=False, cache=self._cache())
        self.host = host

    def _cache(self) -> ArtifactCache | None:
        """The worker's artifact cache; None (artifacts read at their origin) when its
        directory cannot be made: a worker on a read-only home can still do the work."""
        try:
            return ArtifactCache.configured(self.cache_dir, self.cache_limit)
        except OSError as exc:
            logger.warning("pervade: no artifact cache on this worker, reading origins: %s", exc)
            return None


def context_host(worker: Any = None) -> ContextHost:
    """The host of `worker`, by default the worker this task runs on."""
    worker = worker if worker is not None else get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.host is None:
        raise RuntimeError(f"worker {worker.address} has no {PLUGIN_NAME} plugin registered")
    host: ContextHost = plugin.host
    return host
