"""A SimPy simulation of a pool of GPU workers, driven by the real `core.Dispatcher`.

Workers join and leave per the scenario's availability source; each event the runtime
would report is fed to the dispatcher, and each decision it returns is carried out here
in simulated time (builds from a tier, tasks of items x work / speed, stages, evictions).
Only `random.Random(scenario.seed)` draws randomness and only `env.now` is a clock, so a
seed gives one event log, byte for byte.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from random import Random
from typing import Any

import simpy

from pervade.core.accounting import Ledger
from pervade.core.availability import TraceChurn, trace_schedule
from pervade.core.cache_policy import Tier
from pervade.core.churn import ChurnRate, Eviction, EvictionKind
from pervade.core.decisions import (
    Abort,
    CancelTask,
    Decision,
    FailItems,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    StageContext,
)
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import (
    ContextStateChanged,
    Event,
    ItemsSubmitted,
    TaskFailed,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.items import ItemRef
from pervade.core.states import ContextState
from pervade.sim.availability import Availability, Proc
from pervade.sim.model import GpuClass, Scenario
from pervade.sim.result import Sample, SimResult


class SimulationError(RuntimeError):
    """The simulation cannot finish: the dispatcher aborted, or the pool emptied for good."""


@dataclass(slots=True)
class _Worker:
    name: str
    slot: int
    gpu: GpuClass
    seq: int  # join order: the newest is evicted first by a stack trace
    queue: deque[RunTask] = field(default_factory=deque)
    running: RunTask | None = None
    run_end: float = 0.0
    live: set[str] = field(default_factory=set)
    staged: set[str] = field(default_factory=set)
    procs: list[simpy.Process] = field(default_factory=list)
    wake: simpy.Event | None = None
    alive: bool = True
    draining: bool = False


class Simulation(Availability):
    def __init__(self, scenario: Scenario, log: bool = False) -> None:
        self.s = scenario
        config = scenario.dispatch
        if not scenario.reuse:
            # Naive: a worker's context lives for one task, so a second task queued behind
            # it would only find the context gone.
            config = dataclasses.replace(config, max_in_flight=1)
        self.dispatcher = Dispatcher(config)
        self.env = simpy.Environment()
        self.rng = Random(scenario.seed)
        self.ledger = Ledger()
        self.origin = simpy.Resource(self.env, capacity=scenario.pool.loads.origin_streams)
        self.origin_reads: dict[str, simpy.Event] = {}  # context -> its origin read's end
        self.slots = scenario.pool.slot_classes()
        self.free_slots = list(range(len(self.slots)))  # lowest first
        self.workers: dict[str, _Worker] = {}
        self.log: list[str] | None = [] if log else None
        self.done_count = [0] * scenario.job.items
        self.completed = 0
        self.origin_bytes = 0
        self.loads = 0
        self.evictions = 0
        self.series: list[Sample] = []
        self.done = self.env.event()
        self.availability_over = False
        self._seq = 0
        self._events: deque[Event] = deque()
        self._feeding = False

    # -- feeding the dispatcher ------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand `event` to the dispatcher and carry out its decisions; events those raise
        wait their turn, so the dispatcher sees them in one well-defined order."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                next_event = self._events.popleft()
                if self.log is not None:
                    text = (
                        f"ItemsSubmitted({len(next_event.items)})"
                        if isinstance(next_event, ItemsSubmitted)
                        else repr(next_event)
                    )
                    self.log.append(f"{self.env.now:.6f} {text}")
                for decision in self.dispatcher.handle(next_event, self.env.now):
                    self.apply(decision)
        finally:
            self._feeding = False
        if not self.done.triggered and self.dispatcher.is_idle:
            self.done.succeed()

    def apply(self, decision: Decision) -> None:
        now = self.env.now
        match decision:
            case LoadContext(worker=name, context=context):
                w = self.workers.get(name)
                if w is not None and w.alive:
                    w.procs.append(self.env.process(self._load(w, context)))
            case StageContext(worker=name, context=context):
                w = self.workers.get(name)
                if w is None or not w.alive:
                    return
                if not self.s.reuse:  # naive keeps no copies: refuse, once
                    self.feed(ContextStateChanged(name, context, ContextState.FAILED))
                else:
                    w.procs.append(self.env.process(self._stage(w, context)))
            case RunTask(task=task, worker=name):
                w = self.workers.get(name)
                if w is None or not w.alive:
                    return  # its WorkerLeft is queued: the dispatcher requeues the items
                self.ledger.started(task, name, now)
                w.queue.append(decision)
                if w.wake is not None and not w.wake.triggered:
                    w.wake.succeed()
            case CancelTask(task=task):
                for w in self.workers.values():
                    w.queue = deque(t for t in w.queue if t.task != task)
            case FailItems(items=items):
                for item in items:
                    self._complete(item)
            case RestartWorker(worker=name):
                w = self.workers.get(name)
                if w is not None and w.alive:
                    self._leave(w)
                    self._join(w.slot)
            case Abort(reason=reason):
                raise SimulationError(f"the dispatcher aborted: {reason}")
            case RequeueItems():
                pass  # counted by the dispatcher's stats

    def _complete(self, item: str) -> None:
        self.done_count[int(item[1:])] += 1
        self.completed += 1

    # -- workers ---------------------------------------------------------------------

    def _join(self, slot: int) -> None:
        self._seq += 1
        w = _Worker(f"w{self._seq:06d}", slot, self.slots[slot], self._seq)
        self.workers[w.name] = w
        self.ledger.joined(w.name, self.env.now)
        w.procs.append(self.env.process(self._work(w)))
        self.feed(WorkerJoined(w.name))

    def _leave(self, w: _Worker) -> None:
        """The worker is gone: whatever it was doing is lost (the dispatcher requeues)."""
        w.alive = False
        for proc in w.procs:
            if proc.is_alive:
                proc.interrupt()
        lost = ([w.running] if w.running else []) + list(w.queue)
        w.running, w.queue = None, deque()
        del self.workers[w.name]
        self.free_slots.append(w.slot)
        self.free_slots.sort()
        self.ledger.left(w.name, self.env.now)
        for task in lost:
            self.feed(TaskFailed(task.task, "worker evicted", evicted=True))
        self.feed(WorkerLeft(w.name))

    def _work(self, w: _Worker) -> Proc:
        try:
            while True:
                if not w.queue:
                    w.wake = self.env.event()
                    yield w.wake
                    continue
                task = w.queue.popleft()
                if task.context not in w.live:
                    self._hand_back(task)
                    continue
                w.running, start = task, self.env.now
                seconds = len(task.items) * self.s.job.work_seconds / w.gpu.speed
                w.run_end = start + seconds
                yield self.env.timeout(seconds)
                w.running = None
                self.ledger.reported(task.task, self.env.now, seconds, len(task.items),
                                     len(task.items), 0.0)  # fmt: skip
                for item in task.items:
                    self._complete(item)
                if not self.s.reuse:
                    w.live.discard(task.context)
                    self.feed(ContextStateChanged(w.name, task.context, ContextState.ABSENT))
                self.feed(TaskFinished(task.task))
        except simpy.Interrupt:
            return

    def _hand_back(self, task: RunTask) -> None:
        """Return a task unstarted: no time of the worker's went into it."""
        self.ledger.reported(task.task, self.env.now, 0.0, 0, 0, 0.0)
        self.feed(TaskFinished(task.task, unfinished=task.items))

    def _holder(self, w: _Worker, context: str) -> bool:
        return any(
            o is not w and (context in o.live or context in o.staged) for o in self.workers.values()
        )

    def _fetch(self, w: _Worker, context: str) -> Generator[simpy.Event, Any, Tier]:
        """Bring the context's bytes onto `w`'s node: from a peer if one has them, else from
        the origin (waiting for a stream of its shared bandwidth). As in the runtime, one
        reader per artifact reads the origin; the others wait for it, then copy from it."""
        loads, size = self.s.pool.loads, self.s.job.model_bytes
        while self.s.reuse:
            if self._holder(w, context):
                yield self.env.timeout(size / loads.peer_bandwidth)
                w.staged.add(context)
                return Tier.PEER
            pending = self.origin_reads.get(context)
            if pending is None:
                break
            yield pending  # then look again: the reader may have been evicted meanwhile
        done = self.origin_reads[context] = self.env.event()
        try:
            with self.origin.request() as request:
                yield request
                yield self.env.timeout(size * loads.origin_streams / loads.origin_bandwidth)
            self.origin_bytes += size
            if self.s.reuse:
                w.staged.add(context)  # the bytes stay on the node: peers may copy them
        finally:
            if self.origin_reads.get(context) is done:
                del self.origin_reads[context]
            done.succeed()
        return Tier.ORIGIN

    def _load(self, w: _Worker, context: str) -> Proc:
        start = self.env.now
        try:
            if context in w.staged:
                tier = Tier.HOST
            else:
                tier = yield from self._fetch(w, context)
            yield self.env.timeout(self.s.pool.loads.host_seconds)
        except simpy.Interrupt:
            return
        seconds = self.env.now - start
        w.live.add(context)
        self.loads += 1
        self.ledger.loaded(w.name, seconds, self.env.now)
        state = ContextState.WARM
        self.feed(ContextStateChanged(w.name, context, state, seconds, tier))

    def _stage(self, w: _Worker, context: str) -> Proc:
        try:
            yield from self._fetch(w, context)
        except simpy.Interrupt:
            return
        w.staged.add(context)
        self.feed(ContextStateChanged(w.name, context, ContextState.STAGED, tier=Tier.HOST))

    def _evict(self, eviction: Eviction) -> Proc:
        """Take one live worker per the eviction; a graceful one may finish its running
        task within the grace period, handing back what it has not started."""
        live = sorted((w for w in self.workers.values() if not w.draining), key=lambda w: w.name)
        if not live:
            return
        if eviction.pick is None:
            w = max(live, key=lambda w: w.seq)
        else:
            w = live[int(eviction.pick * len(live))]
        self.evictions += 1
        if eviction.kind is EvictionKind.HARD:
            self._leave(w)
            return
        w.draining = True
        self.feed(WorkerDraining(w.name))
        handed_back, w.queue = list(w.queue), deque()
        for task in handed_back:
            self._hand_back(task)
        if w.running is not None and w.run_end - self.env.now <= self.s.grace_seconds:
            # The worker's own timeout was scheduled first: its report comes before this.
            yield self.env.timeout(w.run_end - self.env.now)
        elif w.running is not None:
            yield self.env.timeout(self.s.grace_seconds)
        if w.alive:
            self._leave(w)

    def _sampler(self) -> Proc:
        step, last = self.s.sample_seconds, 0
        while not self.done.triggered:
            yield self.env.timeout(step)
            done = self.completed
            self.series.append(
                Sample(
                    self.env.now, len(self.workers), (done - last) / step, self.s.job.items - done
                )
            )
            last = done
            if self.availability_over and not self.workers and not self.done.triggered:
                raise SimulationError(
                    f"the pool emptied for good at {self.env.now:.0f} s with "
                    f"{self.s.job.items - done} items left"
                )

    # -- the run ---------------------------------------------------------------------

    def run(self) -> SimResult:
        availability = self.s.availability
        if isinstance(availability, TraceChurn):
            schedule = trace_schedule(availability, len(self.slots), self.rng)
            initial, actions = schedule.initial, schedule.actions
        else:
            initial, actions = len(self.slots), ()
        self.availability_over = availability is None or isinstance(availability, TraceChurn)
        job = self.s.job
        self.feed(ItemsSubmitted(job.context, tuple(ItemRef(f"i{n}") for n in range(job.items))))
        for _ in range(initial):
            self._join_free()
        if isinstance(availability, ChurnRate):
            self.env.process(self._rate_churn(availability))
        elif actions:
            self.availability_over = False
            self.env.process(self._trace(actions))
        self.env.process(self._sampler())
        self.env.run(until=self.done)
        end = self.env.now
        return SimResult(
            makespan=end,
            items=job.items,
            completed=self.completed,
            goodput=self.ledger.snapshot(end),
            items_rerun=self.dispatcher.stats.requeued_evicted,
            origin_bytes=self.origin_bytes,
            loads=self.loads,
            evictions=self.evictions,
            series=tuple(self.series),
            log=tuple(self.log or ()),
        )


def simulate(scenario: Scenario, log: bool = False) -> SimResult:
    """Run `scenario` to its last item; `log` keeps every event fed to the dispatcher."""
    return Simulation(scenario, log).run()
