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


def evict_mid_task(sim: Simulation, grace: float) -> list[float]:
    """Give the newest worker notice at the first whole second when its running task has
    finished an item and cannot finish within `grace`; the notice time is appended to the
    list returned."""
    notices: list[float] = []

    def process() -> Generator[simpy.Event, Any, None]:
        while True:
            yield sim.env.timeout(1.0)
            w = max(sim.workers.values(), key=lambda w: w.seq)
            if w.running is None:
                continue
            per_item = SLOW.work_seconds / w.gpu.speed
            started = sim.env.now - w.run_start - sim.s.pool.task_overhead_seconds
            if started > per_item and w.run_end - sim.env.now > grace:
                break
        notices.append(sim.env.now)
        yield from sim._evict(Eviction(sim.env.now, EvictionKind.GRACEFUL, None))

    sim.env.process(process())
    return notices


# Two GPUs, items of 20 s: a task of two items or more cannot finish within 30 s of grace.
SLOW = Job(items=60, work_seconds=20.0, model_bytes=GB)
TWO = Pool((GpuClass("g", 2),), Loads(host_seconds=5.0))
GRACE = 30.0


def run_with_notice(policy: str) -> tuple[Simulation, Recording, Any, float]:
    scenario = Scenario(SLOW, TWO, policy=policy, batch=10, grace_seconds=GRACE)
    recording = Recording(scenario)
    sim = Simulation(scenario, dispatcher=recording)
    notices = evict_mid_task(sim, GRACE)
    result = sim.run()
    (notice,) = notices
    return sim, recording, result, notice


def test_pervade_drains_reporting_the_items_it_finished() -> None:
    sim, rec, result, notice = run_with_notice("pervade")
    sizes = {d.task: len(d.items) for _, d in rec.decisions if isinstance(d, RunTask)}
    assert [t for t, e in rec.events if isinstance(e, WorkerDraining)] == [notice]
    partial = [
        (t, e)
        for t, e in rec.events
        if isinstance(e, TaskFinished) and 0 < len(e.unfinished) < sizes[e.task]
    ]
    # The running task reported what it finished at the end of the grace period and handed
    # back the rest; nothing it finished ran again, nothing was lost to the eviction.
    assert [t for t, _ in partial] == [notice + GRACE]
    assert not any(isinstance(e, TaskFailed) for _, e in rec.events)
    assert result.items_rerun == 0
    assert sim.finished_count == [1] * SLOW.items
    assert result.completed == SLOW.items
    (left,) = [t for t, e in rec.events if isinstance(e, WorkerLeft)]
    assert left == notice + GRACE


def test_reference_ignores_the_notice_and_loses_the_running_task() -> None:
    sim, rec, result, notice = run_with_notice("reference")
    assert not any(isinstance(e, WorkerDraining) for _, e in rec.events)
    # The worker ran on until the grace period ended and died with its tasks.
    lost = [(t, e) for t, e in rec.events if isinstance(e, TaskFailed)]
    assert lost and {t for t, _ in lost} == {notice + GRACE}
    assert all(e.evicted for _, e in lost)
    assert result.items_rerun >= 10  # the whole running task (of the batch) reruns
    assert result.goodput.lost >= GRACE  # at least the grace period's work was thrown away
    assert set(sim.done_count) == {1}  # still exactly once
    drained = run_with_notice("pervade")[2]
    assert drained.goodput.lost < result.goodput.lost


@pytest.mark.parametrize("seed", [1, 2])
def test_under_graceful_churn_pervade_loses_nothing_and_reference_does(seed: int) -> None:
    churn = ChurnRate(mean_seconds=300.0, graceful=1.0, rejoin_seconds=20.0)
    pool = Pool((GpuClass("a", 6), GpuClass("b", 3, 2.0)))
    job = Job(3000, 2.0, 4 * GB)
    pervade = Simulation(Scenario(job, pool, churn, seed, batch=32)).run()
    reference = Simulation(Scenario(job, pool, churn, seed, policy="reference", batch=32)).run()
    assert pervade.evictions > 5 and reference.evictions > 5
    assert pervade.items_rerun == 0
    assert reference.items_rerun > 0
    assert pervade.goodput.lost < reference.goodput.lost


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


def test_static_with_no_wait_is_there_from_the_start() -> None:
    result = Simulation(Scenario(SLOW, TWO, policy="static", queue_wait_seconds=0.0)).run()
    assert result.series[0].at == 0.0 and result.series[0].active_workers == 2


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
