"""Events: what happened, as the runtime or the simulator observed it."""

from __future__ import annotations

from dataclasses import dataclass

from pervade.core.cache_policy import Tier
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
    # The kind of device it runs on (e.g. "a100-40gb"): speed and eviction hazard are learned
    # per class, so a worker new to the run starts from what its class has shown.
    gpu_class: str = ""


@dataclass(frozen=True, slots=True)
class WorkerClassified:
    """The worker said what device it runs on, after it joined (a worker knows its GPU only
    once it has claimed one). Its speed estimate and eviction exposure move to the class."""

    worker: str
    gpu_class: str


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    worker: str


@dataclass(frozen=True, slots=True)
class WorkerDraining:
    """The worker was told it will be evicted (SIGTERM with a grace period): it takes no new
    work, cuts its running task short and leaves. Its departure is a graceful eviction."""

    worker: str
    # Seconds until it must be gone, when known: work that fits in them can still be given
    # (a short task sized to end in time). None: it takes nothing new.
    grace_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ContextStateChanged:
    """A context's state on one worker changed. `tier` says where the artifacts came from
    for a finished build (WARM with `load_seconds`), or where the staged copy is (STAGED);
    None when the worker did not say (older workers, contexts without artifacts)."""

    worker: str
    context: str
    state: ContextState
    load_seconds: float | None = None
    tier: Tier | None = None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """The task reported. Every item has an outcome (a result or a per-item error) except
    `unfinished` ones, which the worker handed back without running (it is draining, or its
    context broke), and `failed` ones, whose batch raised `error`.

    `restart` asks for a new worker process: the device is unusable in this one (a CUDA
    error is sticky for the life of the process)."""

    task: str
    unfinished: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    error: str = ""
    restart: bool = False


@dataclass(frozen=True, slots=True)
class TaskProgressed:
    """A running task reported outcomes for some of its items ahead of its end (a finished
    slice), and they were accepted: should its worker die now, only the rest run again."""

    task: str
    done: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task produced nothing more than the outcomes it reported on the way (see
    TaskProgressed).

    `evicted` is true when the worker went away under it: that is an expected ending in
    an opportunistic pool and never counts against the items' failure budget.
    """

    task: str
    error: str
    evicted: bool = False


Event = (
    ItemsSubmitted
    | WorkerJoined
    | WorkerClassified
    | WorkerLeft
    | WorkerDraining
    | ContextStateChanged
    | TaskFinished
    | TaskProgressed
    | TaskFailed
)
