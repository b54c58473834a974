"""Reading the outcome of a Dask future fetched on the client's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from distributed import Client, Future

Deliver = Callable[[concurrent.futures.Future[Any] | None], None]


def fetch_later(client: Client, deliver: Deliver, future: Future[Any]) -> None:
    """On Dask's callback thread: fetch a finished future's result or error and hand the
    fetch to `deliver`, without ever blocking the caller.

    The fetch runs on the client's event loop, concurrently with others: the driver does not
    wait a network round trip per task (that wait was most of the dispatch overhead of a
    warm task), nor forever for a result that died with its worker (Dask then reschedules
    the key, and a worker-restricted key never runs again; the driver cancels it when it
    sees the worker go). A cancelled future is delivered as None.
    """
    if future.status == "cancelled":
        deliver(None)
        return
    loop = client.loop.asyncio_loop  # type: ignore[union-attr]
    fetching = asyncio.run_coroutine_threadsafe(client.gather(future, asynchronous=True), loop)
    fetching.add_done_callback(deliver)


def is_lost_worker(error: BaseException) -> bool:
    """Errors that say the worker went away, not that the task's code failed."""
    if isinstance(error, asyncio.CancelledError | concurrent.futures.CancelledError):
        return True
    return type(error).__name__ in {"KilledWorker", "CommClosedError", "FutureCancelledError"}


def error_of(fetched: concurrent.futures.Future[Any] | None) -> BaseException | None:
    """The error a fetch ended with; None when it succeeded or never ran (cancelled)."""
    if fetched is None or fetched.cancelled():
        return None
    return fetched.exception()
