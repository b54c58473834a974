"""The state the simulator's parts share, and the methods they call across files.

`Simulation` (engine.py) is assembled from mixins, one file per concern: the workers and
their tasks (workers.py), context builds and copies (loading.py), and where workers come from
(availability.py). Each declares what it needs here, so the stubs below are shadowed by the
one real method in the mixin that owns it, whatever the order of the bases.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from random import Random
from typing import Any

import simpy

from pervade.core.accounting import Ledger
from pervade.core.churn import Eviction
from pervade.core.decisions import RunTask
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import Event
from pervade.sim.model import GpuClass, Job, Scenario

Proc = Generator[simpy.Event, Any, None]


class SimulationError(RuntimeError):
    """The simulation cannot finish: the dispatcher aborted, or the pool emptied for good."""


@dataclass(slots=True)
class Worker:
    """One simulated worker: its task queue, the task it runs, its contexts."""

    name: str
    slot: int
    gpu: GpuClass
    seq: int  # join order: the newest is evicted first by a stack trace
    queue: deque[RunTask] = field(default_factory=deque)
    running: RunTask | None = None
    run_start: float = 0.0
    run_end: float = 0.0
    live: dict[str, float] = field(default_factory=dict)  # context -> when last used
    staged: set[str] = field(default_factory=set)  # bytes on the node (HOST)
    procs: list[simpy.Process] = field(default_factory=list)
    work: simpy.Process | None = None  # the process running its tasks, one at a time
    wake: simpy.Event | None = None
    settled: simpy.Event | None = None  # draining: set when it has nothing left to do
    alive: bool = True
    evicting: bool = False  # an eviction picked it: no other one will
    draining: bool = False  # told of its eviction, and draining (pervade)


class SimBase:
    """Shared state (set by `Simulation.__init__`) and cross-file stubs."""

    s: Scenario
    env: simpy.Environment
    rng: Random
    ledger: Ledger
    dispatcher: Dispatcher
    jobs: dict[str, Job]  # by context
    origin: simpy.Resource
    origin_reads: dict[str, simpy.Event]
    slots: tuple[GpuClass, ...]
    free_slots: list[int]
    workers: dict[str, Worker]
    done: simpy.Event
    availability_over: bool
    # what the run measured
    done_count: list[int]  # per item: outcomes accepted (exactly one each, at the end)
    finished_count: list[int]  # per item: copies that finished it, accepted or not
    completed: int
    duplicates: int
    cancelled: int
    origin_bytes: int
    loads: int
    demotions: int
    evictions: int

    def feed(self, event: Event) -> None:
        raise NotImplementedError

    def _join(self, slot: int) -> None:
        raise NotImplementedError

    def _evict(self, eviction: Eviction) -> Proc:
        raise NotImplementedError

    def _victim(self, eviction: Eviction) -> Worker | None:
        raise NotImplementedError

    def _load(self, w: Worker, context: str) -> Proc:
        raise NotImplementedError

    def _stage(self, w: Worker, context: str) -> Proc:
        raise NotImplementedError
