"""Functions the runtime submits to workers. Each finds its worker's context host."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pervade.core.context import ContextSpec
from pervade.core.items import Item, ItemError, TaskOutputs
from pervade.worker.imports import resolve_import
from pervade.worker.plugin import context_host


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What a finished task sends back: one outcome per item, in the items' order."""

    outcomes: tuple[tuple[str, Any], ...]  # (item id, value or ItemError)
    load_seconds: float  # spent building the context for this task (0 when it was warm)
    infer_seconds: float
    tokens: int


def run_task(
    spec: ContextSpec,
    function: str | Callable[..., Any],
    options: Mapping[str, Any],
    items: Sequence[Item],
) -> TaskReport:
    batch_function = resolve_import(function) if isinstance(function, str) else function
    with context_host().use(spec) as (value, load_seconds):
        started = time.perf_counter()
        returned = batch_function(value, list(items), **dict(options))
        infer_seconds = time.perf_counter() - started
    tokens = 0
    if isinstance(returned, TaskOutputs):
        tokens = returned.tokens
        returned = returned.values
    values = list(returned)
    if len(values) != len(items):
        name = getattr(batch_function, "__qualname__", function)
        raise ValueError(
            f"{name} returned {len(values)} values for {len(items)} items; "
            "it must return one value (or ItemError) per item, in order"
        )
    return TaskReport(
        tuple((item.id, v) for item, v in zip(items, values, strict=True)),
        load_seconds,
        infer_seconds,
        tokens,
    )


def load_context(spec: ContextSpec) -> float:
    """Build `spec` on this worker ahead of its tasks; the seconds it took."""
    return context_host().load(spec)


def live_contexts(dask_worker: Any) -> list[str]:
    """Contexts live on a worker; run through `Client.run`, which passes `dask_worker`."""
    return context_host(dask_worker).live()


__all__ = ["ItemError", "TaskReport", "live_contexts", "load_context", "run_task"]
