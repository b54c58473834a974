"""Which workers the scheduler has now, asked afresh.

`Client.scheduler_info()` answers from a cache that the client's own periodic callback also
refreshes, without the per-worker part; a call that lands between the two sees no workers
at all, and a driver polling membership would take every worker for gone and back. Asking
the scheduler directly returns this call's own answer.
"""

from __future__ import annotations

from typing import Any

from distributed import Client


def worker_addresses(client: Client) -> set[str]:
    """The addresses of the workers the scheduler knows, from a fresh identity call."""
    scheduler = client.scheduler
    if scheduler is None:  # not connected (closed): no workers to see
        return set()
    info: dict[str, Any] = client.sync(scheduler.identity, n_workers=-1)
    return set(info["workers"])
