"""Which workers the scheduler has now, asked afresh; plugins for all of them, now and later;
the contexts a worker holds warm.

`Client.scheduler_info()` answers from a cache that the client's own periodic callback also
refreshes, without the per-worker part; a call that lands between the two sees no workers
at all, and a driver polling membership would take every worker for gone and back. Asking
the scheduler directly returns this call's own answer.
"""

from __future__ import annotations

import time
from typing import Any

from distributed import Client, NannyPlugin, WorkerPlugin

from pervade.worker.tasks import live_contexts


def worker_addresses(client: Client) -> set[str]:
    """The addresses of the workers the scheduler knows, from a fresh identity call."""
    scheduler = client.scheduler
    if scheduler is None:  # not connected (closed): no workers to see
        return set()
    info: dict[str, Any] = client.sync(scheduler.identity, n_workers=-1)
    return set(info["workers"])


def register_plugin(client: Client, plugin: WorkerPlugin | NannyPlugin, attempts: int = 5) -> None:
    """Register a worker or nanny plugin, again if a worker died while it was sent round:
    the scheduler keeps it for workers that join later, and registering it again replaces
    it where it arrived (context hosts survive that)."""
    for attempt in range(attempts):
        try:
            client.register_plugin(plugin)
            return
        except OSError:  # CommClosedError and the like: a worker went mid-broadcast
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def warm_contexts(client: Client, worker: str) -> list[str]:
    """The contexts live on `worker` now; none when it cannot say (not set up yet, gone)."""
    try:
        return list(client.run(live_contexts, workers=[worker]).get(worker, []))
    except Exception:
        return []
