"""Worker-side helpers for the staging-tier cluster tests (imported by worker processes)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from pervade.core import ContextSpec
from pervade.worker.peer import CHUNK_OP
from pervade.worker.plugin import ContextHostPlugin, context_host


class NodePerWorkerPlugin(ContextHostPlugin):
    """The context-host plugin with caches of its own per worker name, as if every worker
    were on a node of its own (a restarted worker keeps its name, so it finds them again),
    and short peer timeouts and chunks so faults show within a test's time."""

    def __init__(self, base: str, origin_readers: int = 1, timeout: float = 3.0) -> None:
        super().__init__(origin_readers=origin_readers)
        self.base = base
        self.timeout = timeout

    def setup(self, worker: Any) -> None:
        node = Path(self.base) / str(worker.name)
        self.cache_dir = str(node / "disk")
        self.host_cache_dir = str(node / "host")
        self.host_cache_limit = "64MB"
        super().setup(worker)
        assert self.host is not None
        remote = self.host.staging.remote
        if remote is not None:
            remote.timeout = self.timeout  # type: ignore[attr-defined]
            remote.chunk = 1 << 20  # type: ignore[attr-defined]


def load(spec: ContextSpec) -> dict[str, Any]:
    """Build `spec` on this worker (a task); the loader's value."""
    host = context_host()
    host.load(spec)
    with host.use(spec) as (value, _):
        return dict(value)


def drop(dask_worker: Any, context: str) -> str:
    """Drop a live context; the state it is left in ("gone": forgotten)."""
    host = context_host(dask_worker)
    host.drop(context)
    state = host.states().get(context)
    return "gone" if state is None else state.value


def fail_serving_after(dask_worker: Any, chunks: int, how: str) -> int:
    """When asked for chunk number `chunks` + 1, this worker kills itself ("kill") or
    freezes ("freeze", until SIGCONT): a peer lost in the middle of a transfer. Only that
    request never gets an answer; once thawed, the worker serves the rest as usual (the
    requests queued while it was frozen must not freeze it again). Its pid."""
    original = dask_worker.handlers[CHUNK_OP]
    served = [0]

    async def chunk(**kwargs: Any) -> Any:
        served[0] += 1
        dask_worker.pervade_chunk_requests = served[0]
        if served[0] == chunks + 1:
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            await asyncio.sleep(3600)  # after SIGCONT: this one still never answers
        return await original(**kwargs)

    dask_worker.handlers[CHUNK_OP] = chunk
    return os.getpid()


def chunk_requests(dask_worker: Any) -> int:
    """Chunk requests this worker had since `fail_serving_after`."""
    return int(getattr(dask_worker, "pervade_chunk_requests", 0))


def holders(digest: str) -> list[str]:
    """The holders of `digest` as this worker's staging chain sees them (a task)."""
    remote = context_host().staging.remote
    assert remote is not None
    return list(remote.holders(digest))
