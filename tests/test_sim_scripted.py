"""The simulator's mechanics under a scripted dispatcher, for corners the real policies reach
only at scale: a running speculative loser cancelled, copies finishing in the same instant,
a context demoted for another and rebuilt from host memory, scaling advice."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
import simpy

from pervade.core.cache_policy import Tier
from pervade.core.churn import Eviction, EvictionKind
from pervade.core.config import DispatchConfig
from pervade.core.decisions import (
    CancelTask,
    Decision,
    LoadContext,
    RestartWorker,
    RunTask,
    ScaleAdvice,
)
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import (
    ContextStateChanged,
    Event,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.states import ContextState
from pervade.sim import GpuClass, Job, Loads, Pool, Scenario, Simulation, SimulationError

GB = 10**9
Script = Callable[[Event, float, "Scripted"], list[Decision]]


class Scripted(Dispatcher):
    """Answers events with `script`; idle once `expected` task reports came in."""

    def __init__(self, script: Script, expected: int) -> None:
        super().__init__(DispatchConfig())
        self.script, self.expected = script, expected
        self.events: list[tuple[float, Event]] = []
        self.workers_seen: list[str] = []
        self.warm: list[tuple[str, str]] = []

    def handle(self, event: Event, now: float) -> list[Decision]:
        self.events.append((now, event))
        if isinstance(event, WorkerJoined):
            self.workers_seen.append(event.worker)
        return self.script(event, now, self)

    @property
    def is_idle(self) -> bool:
        return sum(isinstance(e, TaskFinished) for _, e in self.events) >= self.expected

    def finished(self) -> list[tuple[float, str]]:
        return [(t, e.task) for t, e in self.events if isinstance(e, TaskFinished)]


def items(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"i{n}" for n in range(first, last))


def run(scenario: Scenario, script: Script, expected: int) -> tuple[Simulation, Scripted]:
    scripted = Scripted(script, expected)
    sim = Simulation(scenario, dispatcher=scripted)
    sim.run()
    return sim, scripted


# A model with no bytes: a build is its 1 s of host seconds. No task overhead: times are
# items x work / speed.
QUICK = Loads(host_seconds=1.0)


def warm_both(event: Event, d: Scripted) -> list[Decision]:
    if isinstance(event, WorkerJoined):
        return [LoadContext(event.worker, "model")]
    return []


def test_a_cancelled_running_copy_stops_alone_and_its_worker_goes_on() -> None:
    # slot order: slow (speed 1) then fast (speed 2)
    pool = Pool((GpuClass("slow", 1, 1.0), GpuClass("fast", 1, 2.0)), QUICK, 0.0)
    scenario = Scenario(Job(20, 1.0, 0), pool)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        match event:
            case ContextStateChanged(state=ContextState.WARM):
                d.warm.append((event.worker, event.context))
                if len(d.warm) == 2:
                    slow, fast = d.workers_seen
                    return [
                        RunTask("t1", slow, "model", items(0, 10)),
                        RunTask("t2", slow, "model", items(10, 20)),
                        RunTask("t1-copy", fast, "model", items(0, 10)),
                    ]
            case TaskFinished(task="t1-copy"):
                return [CancelTask("t1")]
        return warm_both(event, d)

    sim, d = run(scenario, script, expected=2)
    # Warm at 1 s. The copy wins at 1 + 10/2 = 6 s; t1 stops there, and the slow worker
    # starts t2 at once: 6 + 10 = 16 s (not 21 s behind the whole of t1).
    assert d.finished() == [(6.0, "t1-copy"), (16.0, "t2")]
    assert sim.cancelled == 1
    assert sim.finished_count == [1] * 20 and sim.duplicates == 0
    books = sim.ledger.snapshot(sim.env.now)
    assert books.lost == pytest.approx(5.0)  # t1's 5 s on the slow worker, thrown away
    assert books.useful == pytest.approx(10 / 2 + 10)


def test_a_cancel_for_a_queued_copy_takes_it_out_of_the_queue() -> None:
    pool = Pool((GpuClass("g", 2),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        match event:
            case ContextStateChanged(state=ContextState.WARM):
                d.warm.append((event.worker, event.context))
                if len(d.warm) == 2:
                    a, b = d.workers_seen
                    return [
                        RunTask("t1", a, "model", items(0, 5)),
                        RunTask("t2", b, "model", items(5, 8)),
                        RunTask("t2-copy", a, "model", items(5, 8)),
                    ]
            case TaskFinished(task="t2"):
                return [CancelTask("t2-copy")]
        return warm_both(event, d)

    sim, d = run(Scenario(Job(8, 1.0, 0), pool), script, expected=2)
    # t2 finishes at 4 s while its copy waits behind t1 on worker a: it never runs.
    assert d.finished() == [(4.0, "t2"), (6.0, "t1")]
    assert sim.cancelled == 0 and sim.duplicates == 0
    assert sim.finished_count == [1] * 8


def test_copies_finishing_in_the_same_instant_count_once() -> None:
    pool = Pool((GpuClass("g", 2),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        if isinstance(event, ContextStateChanged) and event.state is ContextState.WARM:
            d.warm.append((event.worker, event.context))
            if len(d.warm) == 2:
                a, b = d.workers_seen
                return [
                    RunTask("t1", a, "model", items(0, 8)),
                    RunTask("t1-copy", b, "model", items(0, 8)),
                ]
        return warm_both(event, d)

    sim, d = run(Scenario(Job(8, 1.0, 0), pool), script, expected=2)
    assert [t for t, _ in d.finished()] == [9.0, 9.0]
    assert sim.done_count == [1] * 8  # accepted once
    assert sim.finished_count == [2] * 8  # though both copies finished
    assert sim.duplicates == 8 and sim.completed == 8
    books = sim.ledger.snapshot(sim.env.now)
    assert books.useful == pytest.approx(8.0) and books.lost == pytest.approx(8.0)
    sim.check_exactly_once()


def test_a_context_demoted_for_another_is_rebuilt_from_host_memory() -> None:
    # One GPU of 20 GB; models of 16 GB and 8 GB do not fit together.
    pool = Pool((GpuClass("g", 1, memory_bytes=20 * GB),), Loads(host_seconds=3.0), 0.0)
    jobs = (Job(4, 1.0, 16 * GB, context="big"), Job(4, 1.0, 8 * GB, context="small"))
    plan = iter(
        [
            [RunTask("t1", "w000001", "big", items(0, 2))],
            [LoadContext("w000001", "small")],
            [RunTask("t2", "w000001", "small", items(4, 8))],
            [LoadContext("w000001", "big")],
            [RunTask("t3", "w000001", "big", items(2, 4))],
        ]
    )

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        if isinstance(event, WorkerJoined):
            return [LoadContext(event.worker, "big")]
        if isinstance(event, ContextStateChanged | TaskFinished) and (
            not isinstance(event, ContextStateChanged) or event.state is ContextState.WARM
        ):
            return next(plan, [])
        return []

    sim, d = run(Scenario(jobs, pool), script, expected=3)
    changes = [e for _, e in d.events if isinstance(e, ContextStateChanged)]
    states = [(e.context, e.state, e.tier) for e in changes]
    assert states == [
        ("big", ContextState.WARM, Tier.ORIGIN),
        ("big", ContextState.STAGED, Tier.HOST),  # demoted to make room for small
        ("small", ContextState.WARM, Tier.ORIGIN),
        ("small", ContextState.STAGED, Tier.HOST),  # and small for big
        ("big", ContextState.WARM, Tier.HOST),
    ]
    rebuilt = changes[-1]
    assert rebuilt.load_seconds == pytest.approx(3.0)  # host seconds only: no fetch
    assert sim.demotions == 2
    assert sim.origin_bytes == 24 * GB  # each model read from the origin once
    sim.check_exactly_once()


def test_a_context_that_cannot_fit_beside_a_busy_one_fails_its_build() -> None:
    pool = Pool((GpuClass("g", 1, memory_bytes=20 * GB),), Loads(host_seconds=1.0), 0.0)
    # big's task runs 100 s: small's bytes (32 s from the origin) arrive under it
    jobs = (Job(10, 10.0, 16 * GB, context="big"), Job(1, 1.0, 8 * GB, context="small"))

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        match event:
            case WorkerJoined():
                return [LoadContext(event.worker, "big")]
            case ContextStateChanged(context="big", state=ContextState.WARM):
                # big runs a task; small's build is asked for under it
                return [
                    RunTask("t1", event.worker, "big", items(0, 10)),
                    LoadContext(event.worker, "small"),
                ]
            case ContextStateChanged(context="small", state=ContextState.FAILED):
                return [RunTask("t2", event.worker, "big", items(10, 11))]
        return []

    sim, d = run(Scenario(jobs, pool), script, expected=2)
    failed = [e for _, e in d.events if isinstance(e, ContextStateChanged) and e.context == "small"]
    assert [e.state for e in failed] == [ContextState.FAILED]
    assert sim.demotions == 0  # big was busy: never demoted under its task
    assert d.finished()[-1] == (1.0 + 64.0 + 100.0 + 10.0, "t2")


def test_a_dispatcher_that_stalls_is_an_error_not_a_hang() -> None:
    pool = Pool((GpuClass("g", 1),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        return warm_both(event, d)  # builds, then never sends a task

    with pytest.raises(SimulationError, match="stalled"):
        run(Scenario(Job(5, 1.0, 0), pool, sample_seconds=10.0), script, expected=1)


def test_a_draining_worker_runs_what_fits_its_grace_and_cuts_the_rest() -> None:
    pool = Pool((GpuClass("g", 2),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        match event:
            case ContextStateChanged(state=ContextState.WARM):
                d.warm.append((event.worker, event.context))
                if len(d.warm) == 2:
                    return [RunTask("t1", "w000002", "model", items(0, 20))]
            case WorkerDraining(worker="w000002"):
                # work for the draining worker: one task fits the grace period, one does not
                return [
                    RunTask("t2", "w000002", "model", items(20, 25)),
                    RunTask("t3", "w000002", "model", items(25, 100)),
                ]
            case TaskFinished(task="t3"):
                return [RunTask("t4", "w000001", "model", event.unfinished)]
        return warm_both(event, d)

    scripted = Scripted(script, expected=4)
    sim = Simulation(Scenario(Job(100, 1.0, 0), pool, grace_seconds=30.0), dispatcher=scripted)

    def notice() -> Generator[simpy.Event, Any, None]:
        yield sim.env.timeout(10.0)
        yield from sim._evict(Eviction(10.0, EvictionKind.GRACEFUL, None))

    sim.env.process(notice())
    sim.run()
    # t1 runs 1-21 s, t2 21-26 s, t3 from 26 s until the grace period ends at 40 s: 14 of
    # its items done, the other 61 handed back and run on the other worker.
    assert scripted.finished() == [(21.0, "t1"), (26.0, "t2"), (40.0, "t3"), (101.0, "t4")]
    (cut,) = [e for _, e in scripted.events if isinstance(e, TaskFinished) and e.task == "t3"]
    assert cut.unfinished == items(39, 100)
    left = [t for t, e in scripted.events if isinstance(e, WorkerLeft)]
    assert left == [40.0]
    assert sim.finished_count == [1] * 100


def test_a_restarted_worker_keeps_its_slot() -> None:
    pool = Pool((GpuClass("g", 2),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        match event:
            case ContextStateChanged(worker="w000001", state=ContextState.WARM):
                return [RestartWorker("w000001", "device lost")]
            case ContextStateChanged(state=ContextState.WARM):
                d.warm.append((event.worker, event.context))
                if len(d.warm) == 1:
                    return [RunTask("t1", event.worker, "model", items(0, 4))]
        return warm_both(event, d)

    sim, d = run(Scenario(Job(4, 1.0, 0), pool), script, expected=1)
    assert d.workers_seen == ["w000001", "w000002", "w000003"]
    assert sorted(w.slot for w in sim.workers.values()) == [0, 1]
    assert sim.free_slots == []  # the restart took slot 0 back at once


def test_scale_advice_is_recorded_when_it_changes() -> None:
    pool = Pool((GpuClass("g", 1),), QUICK, 0.0)

    def script(event: Event, now: float, d: Scripted) -> list[Decision]:
        advice: list[Decision] = [ScaleAdvice(4 if now < 3 else 2, 0, f"at {now:g}")]
        match event:
            case WorkerJoined():
                return [*advice, LoadContext(event.worker, "model")]
            case ContextStateChanged(state=ContextState.WARM):
                return [*advice, RunTask("t1", event.worker, "model", items(0, 5))]
        return advice

    sim, _ = run(Scenario(Job(5, 1.0, 0), pool), script, expected=1)
    # at 0 s (join), 1 s (warm: the same size again), 6 s (finished: a new size)
    assert [(a.at, a.workers) for a in sim.advice] == [(0.0, 4), (6.0, 2)]
