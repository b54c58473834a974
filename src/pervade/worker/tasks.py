"""Functions the runtime submits to workers. Each finds its worker's context host."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pervade.core.context import ContextSpec
from pervade.core.items import Item, TaskOutputs
from pervade.worker.imports import resolve_import
from pervade.worker.plugin import context_host


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What a task sends back: one outcome per item it ran, in the items' order, and the
    ids it handed back unrun because its worker is draining."""

    outcomes: tuple[tuple[str, Any], ...]  # (item id, value or ItemError)
    load_seconds: float  # spent building the context for this task (0 when it was warm)
    infer_seconds: float
    tokens: int
    unfinished: tuple[str, ...] = ()


# A task runs its batch function on slices of about a quarter of its items (at least this
# many), so a worker told to leave can stop between slices and report what is done.
MIN_SLICE = 8
SLICES = 4


def run_task(
    spec: ContextSpec,
    function: str | Callable[..., Any],
    options: Mapping[str, Any],
    items: Sequence[Item],
) -> TaskReport:
    host = context_host()
    if host.draining.is_set():
        return TaskReport((), 0.0, 0.0, 0, tuple(item.id for item in items))
    batch_function = resolve_import(function) if isinstance(function, str) else function
    size = max(MIN_SLICE, -(-len(items) // SLICES))
    outcomes: list[tuple[str, Any]] = []
    tokens = 0
    infer_seconds = 0.0
    with host.use(spec) as (value, load_seconds):
        for start in range(0, len(items), size):
            if start and host.draining.is_set():
                break
            part = items[start : start + size]
            began = time.perf_counter()
            returned = batch_function(value, list(part), **dict(options))
            infer_seconds += time.perf_counter() - began
            if isinstance(returned, TaskOutputs):
                tokens += returned.tokens
                returned = returned.values
            values = list(returned)
            if len(values) != len(part):
                name = getattr(batch_function, "__qualname__", function)
                raise ValueError(
                    f"{name} returned {len(values)} values for {len(part)} items; "
                    "it must return one value (or ItemError) per item, in order"
                )
            outcomes += [(item.id, v) for item, v in zip(part, values, strict=True)]
    unfinished = tuple(item.id for item in items[len(outcomes) :])
    return TaskReport(tuple(outcomes), load_seconds, infer_seconds, tokens, unfinished)


def load_context(spec: ContextSpec) -> float:
    """Build `spec` on this worker ahead of its tasks; the seconds it took."""
    return context_host().load(spec)


def live_contexts(dask_worker: Any) -> list[str]:
    """Contexts live on a worker; run through `Client.run`, which passes `dask_worker`."""
    return context_host(dask_worker).live()


__all__ = ["TaskReport", "live_contexts", "load_context", "run_task"]
