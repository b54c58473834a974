"""The policies side by side on one simulator: pervade drains on notice, reference PCM loses
the running task, static waits in the queue and is never evicted, naive rebuilds per task;
the task overhead makes tiny batches dear."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import pytest
import simpy

from pervade.core.churn import ChurnRate, Eviction, EvictionKind
from pervade.core.decisions import Decision, RunTask
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import (
    Event,
    TaskFailed,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.sim import GpuClass, Job, Loads, Pool, Scenario, Simulation, dispatch_config

GB = 10**9


class Recording(Dispatcher):
    """The real dispatcher, keeping what it was told and what it decided, with times."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(dispatch_config(scenario))
        self.events: list[tuple[float, Event]] = []
        self.decisions: list[tuple[float, Decision]] = []

    def handle(self, event: Event, now: float) -> list[Decision]:
        self.events.append((now, event))
        decisions = super().handle(event, now)
        self.decisions += [(now, d) for d in decisions]
        return decisions


def evict_at(sim: Simulation, at: float, kind: EvictionKind) -> None:
    """Evict the newest worker at `at`, as the availability source would."""

    def process() -> Generator[simpy.Event, Any, None]:
        yield sim.env.timeout(at)
        yield from sim._evict(Eviction(at, kind, None))

    sim.env.process(process())


# Two GPUs; tasks of 10 items of 10 s: a task cannot finish within a 30 s grace period.
SLOW = Job(items=60, work_seconds=10.0, model_bytes=GB)
TWO = Pool((GpuClass("g", 2),), Loads(host_seconds=5.0))
NOTICE, GRACE = 60.0, 30.0


def run_with_notice(policy: str) -> tuple[Simulation, Recording, Any]:
    scenario = Scenario(SLOW, TWO, policy=policy, batch=10, grace_seconds=GRACE)
    recording = Recording(scenario)
    sim = Simulation(scenario, dispatcher=recording)
    evict_at(sim, NOTICE, EvictionKind.GRACEFUL)
    return sim, recording, sim.run()


def test_pervade_drains_reporting_the_items_it_finished() -> None:
    sim, rec, result = run_with_notice("pervade")
    sizes = {d.task: len(d.items) for _, d in rec.decisions if isinstance(d, RunTask)}
    (notice,) = [t for t, e in rec.events if isinstance(e, WorkerDraining)]
    assert notice == NOTICE
    partial = [
        (t, e)
        for t, e in rec.events
        if isinstance(e, TaskFinished) and 0 < len(e.unfinished) < sizes[e.task]
    ]
    # The running task reported what it finished at the end of the grace period and handed
    # back the rest; nothing it finished ran again, nothing was lost to the eviction.
    assert [t for t, _ in partial] == [NOTICE + GRACE]
    assert not any(isinstance(e, TaskFailed) for _, e in rec.events)
    assert result.items_rerun == 0
    assert sim.finished_count == [1] * SLOW.items
    assert result.completed == SLOW.items
    (left,) = [t for t, e in rec.events if isinstance(e, WorkerLeft)]
    assert left == NOTICE + GRACE


def test_reference_ignores_the_notice_and_loses_the_running_task() -> None:
    sim, rec, result = run_with_notice("reference")
    assert not any(isinstance(e, WorkerDraining) for _, e in rec.events)
    # The worker ran on until the grace period ended and died with its tasks.
    lost = [(t, e) for t, e in rec.events if isinstance(e, TaskFailed)]
    assert lost and {t for t, _ in lost} == {NOTICE + GRACE}
    assert all(e.evicted for _, e in lost)
    assert result.items_rerun >= 10  # the whole running task reruns
    assert result.goodput.lost >= GRACE  # at least the grace period's work was thrown away
    assert set(sim.done_count) == {1}  # still exactly once
    drained = run_with_notice("pervade")[2]
    assert drained.goodput.lost < result.goodput.lost


def test_reference_tasks_take_exactly_the_user_batch() -> None:
    scenario = Scenario(Job(300, 0.1, GB), TWO, policy="reference", batch=7)
    rec = Recording(scenario)
    Simulation(scenario, dispatcher=rec).run()
    sizes = [len(d.items) for _, d in rec.decisions if isinstance(d, RunTask)]
    assert sizes and all(n == 7 for n in sizes[:-1]) and sizes[-1] <= 7
    config = dispatch_config(scenario)
    assert (config.task_items, config.adaptive, config.speculate, config.prefetch) == (
        7,
        False,
        False,
        False,
    )


def test_pervade_takes_the_batch_as_a_start_and_keeps_its_features() -> None:
    config = dispatch_config(Scenario(SLOW, TWO, batch=7))
    assert config.task_items == 7 and config.adaptive and config.speculate and config.prefetch
    overhead = dataclasses.replace(TWO, task_overhead_seconds=2.0)
    assert dispatch_config(Scenario(SLOW, overhead)).task_overhead == 2.0


def test_static_waits_in_the_queue_then_is_never_evicted() -> None:
    churn = ChurnRate(mean_seconds=50.0, graceful=0.5, rejoin_seconds=10.0)
    scenario = Scenario(
        Job(2000, 1.0, GB),
        Pool((GpuClass("a", 6), GpuClass("b", 2, 2.0))),
        churn,
        policy="static",
        static_gpus=4,
        queue_wait_seconds=900.0,
        sample_seconds=30.0,
    )
    rec = Recording(scenario)
    result = Simulation(scenario, dispatcher=rec).run()
    joins = [(t, e) for t, e in rec.events if isinstance(e, WorkerJoined)]
    assert [t for t, _ in joins] == [900.0] * 4
    assert sorted(e.gpu_class for _, e in joins) == ["a", "a", "a", "b"]  # the first 4 slots
    assert result.evictions == 0 and result.items_rerun == 0
    assert not any(isinstance(e, WorkerLeft) for _, e in rec.events)
    assert {s.active_workers for s in result.series if s.at < 900.0} == {0}
    assert {s.active_workers for s in result.series if s.at >= 900.0} == {4}
    # 2000 items of 1 s on 3 GPUs of speed 1 and one of speed 2, after the wait
    assert result.makespan > 900.0 + 2000 / 5.0


def test_workers_join_with_their_gpu_class() -> None:
    scenario = Scenario(SLOW, Pool((GpuClass("a100", 2), GpuClass("h100", 1, 2.5))))
    rec = Recording(scenario)
    Simulation(scenario, dispatcher=rec).run()
    classes = [e.gpu_class for _, e in rec.events if isinstance(e, WorkerJoined)]
    assert sorted(classes) == ["a100", "a100", "h100"]


@pytest.mark.parametrize("batch", [1, 20])
def test_every_task_pays_the_overhead(batch: int) -> None:
    # One GPU, a model with no bytes: a 5 s build, then items x (work) + tasks x overhead.
    items, work, overhead = 100, 0.1, 0.5
    pool = Pool((GpuClass("g", 1),), Loads(host_seconds=5.0), task_overhead_seconds=overhead)
    result = Simulation(Scenario(Job(items, work, 0), pool, policy="reference", batch=batch)).run()
    tasks = items // batch
    assert result.makespan == pytest.approx(5.0 + items * work + tasks * overhead)
    # the overhead is no useful work
    assert result.goodput.useful == pytest.approx(items * work)


def test_naive_policy_builds_per_task_from_the_origin() -> None:
    scenario = Scenario(Job(200, 1.0, GB), TWO, policy="naive", batch=20)
    result = Simulation(scenario).run()
    assert result.loads == 10  # one per task
    assert result.origin_bytes == 10 * GB
