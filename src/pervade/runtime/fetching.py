"""Reading the outcome of a Dask future fetched on the client's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any


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
