"""Scenario inputs are validated with errors naming the field."""

from __future__ import annotations

import pytest

from pervade.core.config import ConfigError
from pervade.sim import GpuClass, Job, Loads, Pool, Scenario


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Job(0, 1.0, 1), "job.items"),
        (lambda: Job(10, 0.0, 1), "job.work_seconds"),
        (lambda: Job(10, 1.0, -1), "job.model_bytes"),
        (lambda: GpuClass("a", -1), "count"),
        (lambda: GpuClass("a", 1, speed=0.0), "speed"),
        (lambda: Loads(origin_bandwidth=0.0), "loads.origin_bandwidth"),
        (lambda: Loads(origin_streams=0), "loads.origin_streams"),
        (lambda: Pool((GpuClass("a", 0),)), "at least one GPU"),
        (lambda: Pool((GpuClass("a", 1), GpuClass("a", 1))), "repeat"),
        (lambda: Scenario(Job(1, 1.0, 1), Pool((GpuClass("a", 1),)), grace_seconds=-1), "grace"),
        (lambda: Job(1, 1.0, 1, context=""), "job.context"),
        (lambda: Pool((GpuClass("a", 1),), task_overhead_seconds=-0.1), "task_overhead"),
        (lambda: Scenario(Job(1, 1.0, 1), Pool((GpuClass("a", 1),)), policy="lazy"), "policy"),
        (lambda: Scenario(Job(1, 1.0, 1), Pool((GpuClass("a", 1),)), batch=0), "batch"),
        (lambda: Scenario(Job(1, 1.0, 1), Pool((GpuClass("a", 1),)), static_gpus=2), "static_gpus"),
        (
            lambda: Scenario(Job(1, 1.0, 1), Pool((GpuClass("a", 1),)), queue_wait_seconds=-1),
            "queue_wait_seconds",
        ),
        (lambda: Scenario((), Pool((GpuClass("a", 1),))), "at least one job"),
    ],
)
def test_bad_inputs_are_refused(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()  # type: ignore[operator]


def test_slot_classes_interleave_the_classes() -> None:
    pool = Pool((GpuClass("a", 4), GpuClass("b", 2)))
    slots = [g.name for g in pool.slot_classes()]
    assert sorted(slots) == ["a", "a", "a", "a", "b", "b"]
    # the first half of the slots holds half of each class
    assert slots[:3].count("a") == 2 and slots[:3].count("b") == 1


def test_a_scenario_of_several_jobs_counts_all_their_items() -> None:
    jobs = (Job(10, 1.0, 1, context="a"), Job(5, 1.0, 1, context="b"))
    scenario = Scenario(jobs, Pool((GpuClass("g", 1),)))
    assert scenario.jobs == jobs and scenario.items == 15
    single = Scenario(jobs[0], Pool((GpuClass("g", 1),)))
    assert single.jobs == (jobs[0],) and single.items == 10
    assert single.reuse and not Scenario(jobs[0], single.pool, policy="naive").reuse
