"""Events: what happened, as the runtime or the simulator observed it."""

from __future__ import annotations

from dataclasses import dataclass

from pervade.core.items import ItemRef
from pervade.core.states import ContextState


@dataclass(frozen=True, slots=True)
class ItemsSubmitted:
    context: str
    items: tuple[ItemRef, ...]


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    worker: str
    live_contexts: tuple[str, ...] = ()  # contexts already warm there (a driver reconnecting)


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    worker: str


@dataclass(frozen=True, slots=True)
class ContextStateChanged:
    worker: str
    context: str
    state: ContextState
    load_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """Every item of the task has an outcome (a result or a per-item error)."""

    task: str


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task produced nothing.

    `evicted` is true when the worker went away under it: that is an expected ending in
    an opportunistic pool and never counts against the items' failure budget.
    """

    task: str
    error: str
    evicted: bool = False


Event = ItemsSubmitted | WorkerJoined | WorkerLeft | ContextStateChanged | TaskFinished | TaskFailed
