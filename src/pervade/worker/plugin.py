"""The Dask WorkerPlugin that holds a worker's contexts and reports their states."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from distributed import WorkerPlugin, get_worker

from pervade.core.states import ContextState
from pervade.storage.cache import ArtifactCache
from pervade.storage.host import host_cache
from pervade.worker.context_host import ContextHost, LoadInfo
from pervade.worker.gpus import CLAIM, gpu_class
from pervade.worker.holders import DaskRemote
from pervade.worker.peer import locate_first, locate_in, register_handlers, unregister_handlers
from pervade.worker.residency import configured_budget

PLUGIN_NAME = "pervade-context-host"
STATE_TOPIC = "pervade-context-state"

# One host per worker process, kept outside the plugin object: a driver that reconnects
# registers the plugin again, and Dask then replaces the plugin instance. The contexts
# it built must survive that.
_HOSTS: dict[str, ContextHost] = {}
logger = logging.getLogger(__name__)


class ContextHostPlugin(WorkerPlugin):
    """`cache_dir` and `cache_limit` (bytes, or a size such as "50GB") set the worker's
    DISK artifact cache; unset, they come from PERVADE_ARTIFACT_CACHE and
    PERVADE_ARTIFACT_CACHE_LIMIT in the worker's environment, else the defaults.
    `host_cache_dir` and `host_cache_limit` set the HOST (tmpfs) cache the same way
    (PERVADE_HOST_CACHE, PERVADE_HOST_CACHE_LIMIT; a limit of 0 turns it off).
    `peers`: serve cached artifacts to other workers and pull from them; `origin_readers`:
    how many workers of the cluster read one artifact from its origin at once
    (PERVADE_ORIGIN_READERS, 1; the others copy it from a peer).
    `device_memory`: bytes (or a size) the live contexts may hold together before the least
    valuable are demoted to the HOST tier (PERVADE_DEVICE_MEMORY; by default 80% of the
    GPU, half the RAM without one; "none": no limit)."""

    name = PLUGIN_NAME

    def __init__(
        self,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
        host_cache_dir: str | None = None,
        host_cache_limit: int | str | None = None,
        peers: bool = True,
        origin_readers: int | str | None = None,
        device_memory: int | str | None = None,
    ) -> None:
        self.host: ContextHost | None = None
        self.cache_dir = cache_dir
        self.cache_limit = cache_limit
        self.host_cache_dir = host_cache_dir
        self.host_cache_limit = host_cache_limit
        self.peers = peers
        self.origin_readers = origin_readers
        self.device_memory = device_memory

    def setup(self, worker: Any) -> None:
        # First: CUDA must not be initialized before this process knows its GPU.
        CLAIM.take()
        address = str(worker.address)

        def notify(
            context: str, state: ContextState, seconds: float | None, load: LoadInfo | None
        ) -> None:
            message: dict[str, Any] = {
                "worker": address,
                "context": context,
                "state": state.value,
                "load_seconds": seconds,
                # Known once CUDA runs here, so from the first build on.
                "gpu_class": gpu_class(),
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
            disk, tmpfs = self._cache(), self._host_cache()
            remote = DaskRemote(worker, self.origin_readers) if self.peers else None
            host = ContextHost(
                notify,
                report_use=False,
                cache=disk,
                host_cache=tmpfs,
                remote=remote,
                device_budget=configured_budget(self.device_memory),
            )
            _HOSTS[address] = host
        if self.peers:
            # The handlers belong to the worker, not the plugin: registered again (a new
            # plugin instance) they serve the same caches.
            roots = [locate_in(c.root) for c in host.staging.caches]
            register_handlers(worker, locate_first(*roots))
        self.host = host

    def teardown(self, worker: Any) -> None:
        if self.peers:
            unregister_handlers(worker)

    def _host_cache(self) -> ArtifactCache | None:
        """The HOST tier; None when turned off or when its directory cannot be made."""
        try:
            return host_cache(self.host_cache_dir, self.host_cache_limit)
        except OSError as exc:
            logger.warning("pervade: no HOST (tmpfs) artifact cache on this worker: %s", exc)
            return None

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
