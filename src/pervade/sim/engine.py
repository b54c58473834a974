"""A SimPy simulation of a pool of GPU workers, driven by the real `core.Dispatcher`.

Workers join and leave per the scenario's availability source (or arrive as a static
allocation); each event the runtime would report is fed to the dispatcher, and each decision
it returns is carried out here in simulated time (builds from a tier, tasks of items x work /
speed plus an overhead, stages, cancellations, evictions). Only `random.Random(scenario.seed)`
draws randomness and only `env.now` is a clock, so a seed gives one event log, byte for byte.
"""

from __future__ import annotations

from collections import deque
from random import Random

import simpy

from pervade.core.accounting import Ledger
from pervade.core.availability import TraceChurn, trace_schedule
from pervade.core.churn import ChurnRate
from pervade.core.decisions import (
    Abort,
    CancelTask,
    Decision,
    FailItems,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    ScaleAdvice,
    StageContext,
)
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import ContextStateChanged, Event, ItemsSubmitted
from pervade.core.items import ItemRef
from pervade.core.states import ContextState
from pervade.sim.availability import Availability
from pervade.sim.base import Proc, SimulationError
from pervade.sim.loading import Loading
from pervade.sim.model import Replay, Scenario
from pervade.sim.policy import dispatch_config
from pervade.sim.result import Advice, Sample, SimResult
from pervade.sim.workers import Workers

__all__ = ["Simulation", "SimulationError", "simulate"]


class Simulation(Workers, Loading, Availability):
    """One run of a scenario. `dispatcher`: a stand-in for the one the policy configures
    (tests script one to reach corners the real policy reaches only at scale)."""

    def __init__(
        self, scenario: Scenario, log: bool = False, dispatcher: Dispatcher | None = None
    ) -> None:
        self.s = scenario
        self.dispatcher = dispatcher or Dispatcher(dispatch_config(scenario))
        self.env = simpy.Environment()
        self.rng = Random(scenario.seed)
        self.ledger = Ledger()
        self.jobs = {job.context: job for job in scenario.jobs}
        self.origin = simpy.Resource(self.env, capacity=scenario.pool.loads.origin_streams)
        self.origin_reads = {}  # context -> its origin read's end
        slots = scenario.pool.slot_classes()
        if scenario.policy == "static":
            slots = slots[: scenario.static_gpus or len(slots)]
        self.slots = slots
        self.free_slots = list(range(len(self.slots)))  # lowest first
        self.workers = {}
        self.log: list[str] | None = [] if log else None
        self.done_count = [0] * scenario.items
        self.finished_count = [0] * scenario.items
        self.completed = self.duplicates = self.cancelled = 0
        self.origin_bytes = self.loads = self.demotions = self.evictions = 0
        self.series: list[Sample] = []
        self.advice: list[Advice] = []
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
                        f"ItemsSubmitted({next_event.context!r}, {len(next_event.items)})"
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
                    w.procs = [p for p in w.procs if p.is_alive]
                    w.procs.append(self.env.process(self._load(w, context)))
            case StageContext(worker=name, context=context):
                w = self.workers.get(name)
                if w is None or not w.alive:
                    return
                if not self.s.reuse:  # naive keeps no copies: refuse, once
                    self.feed(ContextStateChanged(name, context, ContextState.FAILED))
                else:
                    w.procs = [p for p in w.procs if p.is_alive]
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
                self._cancel(task)
            case FailItems(items=items):
                self._accept(items)
            case RestartWorker(worker=name):
                w = self.workers.get(name)
                if w is not None and w.alive:
                    self._leave(w)
                    self.free_slots.remove(w.slot)  # the new process takes the same slot
                    self._join(w.slot)
            case ScaleAdvice(workers=workers, change=change, reason=reason):
                # Kept when the advised size changes: the dispatcher may repeat itself on
                # every event.
                if not self.advice or self.advice[-1].workers != workers:
                    self.advice.append(Advice(now, workers, change, reason))
            case Abort(reason=reason):
                raise SimulationError(f"the dispatcher aborted: {reason}")
            case RequeueItems():
                pass  # counted by the dispatcher's stats

    def check_exactly_once(self) -> None:
        """Every item has exactly one accepted outcome, however many copies finished it."""
        wrong = [f"i{n}" for n, count in enumerate(self.done_count) if count != 1]
        if wrong:
            raise SimulationError(
                f"{len(wrong)} items without exactly one accepted outcome, e.g. {wrong[:5]}"
            )

    def _sampler(self) -> Proc:
        step, last, stalled = self.s.sample_seconds, 0, 0
        # Started last at time 0: the pool as it begins, static workers with no wait included.
        self.series.append(Sample(0.0, len(self.workers), 0.0, self.s.items - self.completed))
        while not self.done.triggered:
            yield self.env.timeout(step)
            done = self.completed
            self.series.append(
                Sample(self.env.now, len(self.workers), (done - last) / step, self.s.items - done)
            )
            last = done
            if self.availability_over and not self.workers and not self.done.triggered:
                raise SimulationError(
                    f"the pool emptied for good at {self.env.now:.0f} s with "
                    f"{self.s.items - done} items left"
                )
            # Work left, workers there, and none of them doing anything, with nothing more
            # to come from the availability source: no event will ever wake the dispatcher.
            idle = not any(
                w.running or w.queue or any(p.is_alive for p in w.procs)
                for w in self.workers.values()
            )
            stalled = stalled + 1 if idle and self.availability_over else 0
            if stalled >= 3:
                raise SimulationError(
                    f"the run stalled at {self.env.now:.0f} s: {self.s.items - done} items "
                    f"left, {len(self.workers)} workers idle and nothing under way"
                )

    # -- the run ---------------------------------------------------------------------

    def run(self) -> SimResult:
        availability = None if self.s.policy == "static" else self.s.availability
        if isinstance(availability, TraceChurn):
            schedule = trace_schedule(availability, len(self.slots), self.rng)
            initial, actions = schedule.initial, schedule.actions
        else:
            initial, actions = len(self.slots), ()
        self.availability_over = availability is None or isinstance(availability, TraceChurn)
        offset = 0
        for job in self.s.jobs:
            ids = tuple(ItemRef(f"i{offset + n}") for n in range(job.items))
            self.feed(ItemsSubmitted(job.context, ids))
            offset += job.items
        if self.s.policy == "static":
            self.availability_over = False
            self.env.process(self._static(len(self.slots), self.s.queue_wait_seconds))
        else:
            for _ in range(initial):
                self._join_free()
        if isinstance(availability, ChurnRate):
            self.env.process(self._rate_churn(availability))
        elif isinstance(availability, Replay):
            self.env.process(self._replay(availability))
        elif actions:
            self.availability_over = False
            self.env.process(self._trace(actions))
        self.env.process(self._sampler())
        self.env.run(until=self.done)
        self.check_exactly_once()
        end = self.env.now
        last = self.series[-1]
        if end > last.at:  # the last, shorter interval
            rate = (self.completed - (self.s.items - last.backlog)) / (end - last.at)
            self.series.append(Sample(end, len(self.workers), rate, self.s.items - self.completed))
        return SimResult(
            makespan=end,
            items=self.s.items,
            completed=self.completed,
            goodput=self.ledger.snapshot(end),
            items_rerun=self.dispatcher.stats.requeued_evicted,
            origin_bytes=self.origin_bytes,
            loads=self.loads,
            evictions=self.evictions,
            series=tuple(self.series),
            log=tuple(self.log or ()),
            policy=self.s.policy,
            duplicates=self.duplicates,
            cancelled=self.cancelled,
            demotions=self.demotions,
            advice=tuple(self.advice),
        )


def simulate(scenario: Scenario, log: bool = False) -> SimResult:
    """Run `scenario` to its last item; `log` keeps every event fed to the dispatcher."""
    return Simulation(scenario, log).run()
