"""Staging a context's artifacts on a worker ahead of its build (a StageContext decision).

Run through `Client.run`, not as a task: a task would wait behind the worker's running and
queued tasks, which is exactly when a prefetch should overlap them, and it would hold a
task slot. `Client.run` calls this on the worker's event loop, so it must return at once:
the host copies in a background thread and reports STAGED (with the tier) when done.
"""

from __future__ import annotations

from typing import Any

from pervade.core.context import ContextSpec
from pervade.core.states import ContextState
from pervade.worker.plugin import context_host


class PrefetchUnsupported(RuntimeError):
    """This worker's context host cannot stage artifacts without a build."""


def prefetch_context(spec: ContextSpec, dask_worker: Any = None) -> str | None:
    """Start staging `spec` on this worker. None when a copy started (the host reports
    STAGED, or FAILED, when it ends); else the context's state here (a ContextState value),
    which made a copy pointless: already staged, live or being built."""
    host = context_host(dask_worker)
    prefetch = getattr(host, "prefetch", None)
    if prefetch is None:
        raise PrefetchUnsupported(
            f"the context host of this worker ({type(host).__module__}) has no prefetch(); "
            "update pervade on the workers"
        )
    if prefetch(spec) is not None:
        return None
    state = host.states().get(spec.id, ContextState.ABSENT)
    return state.value


__all__ = ["PrefetchUnsupported", "prefetch_context"]
