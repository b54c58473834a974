"""Replaying the churn harness's eviction schedule in the simulator: the same evictions as
the harness draws for a seed, replacements as the harness makes them (a hard-killed worker
restarted by its nanny, a drained one replaced after `rejoin`), and workers that take time
to start."""

from __future__ import annotations

import re
from random import Random

import pytest

from pervade.core.churn import ChurnRate, Eviction, EvictionKind, eviction_schedule
from pervade.core.config import ConfigError
from pervade.sim import GpuClass, Job, Loads, Pool, Replay, Scenario, simulate

GB = 10**9
JOB = Job(items=400, work_seconds=0.5, model_bytes=GB)
LOADS = Loads(host_seconds=2.0, peer_bandwidth=10 * GB, origin_bandwidth=GB, origin_streams=1)


def pool(start: float = 0.0) -> Pool:
    return Pool((GpuClass("cpu", 2, 1.0),), LOADS, task_overhead_seconds=0.2, start_seconds=start)


def times(log: tuple[str, ...], kind: str) -> list[float]:
    return [float(line.split()[0]) for line in log if re.match(rf"\S+ {kind}\(", line)]


def test_of_rate_is_the_harness_schedule_moved_to_the_run_start() -> None:
    rate = ChurnRate(60.0, graceful=0.5, rejoin_seconds=5.0, seed=3)
    drawn = eviction_schedule(rate, 2, 1000.0, Random(3))
    replay = Replay.of_rate(rate, 2, 1000.0, shift=4.0, restart_seconds=1.5)
    assert replay.rejoin_seconds == 5.0 and replay.restart_seconds == 1.5
    assert [(e.kind, e.pick) for e in replay.evictions] == [(e.kind, e.pick) for e in drawn]
    assert [e.at for e in replay.evictions] == pytest.approx([max(0.0, e.at - 4.0) for e in drawn])


def test_a_hard_eviction_is_restarted_after_the_restart_time() -> None:
    replay = Replay(
        (Eviction(20.0, EvictionKind.HARD, 0.0),), rejoin_seconds=5.0, restart_seconds=3.0
    )
    result = simulate(Scenario(JOB, pool(start=100.0), replay, seed=1), log=True)
    assert times(result.log, "WorkerLeft") == [20.0]
    assert times(result.log, "WorkerJoined") == [0.0, 0.0, 23.0]  # not rejoin + start
    assert result.completed == JOB.items and result.evictions == 1


def test_a_drained_worker_is_replaced_after_rejoin_and_start_even_while_it_drains() -> None:
    replay = Replay((Eviction(20.0, EvictionKind.GRACEFUL, 0.0),), rejoin_seconds=5.0)
    scenario = Scenario(JOB, pool(start=2.0), replay, seed=1, grace_seconds=30.0)
    result = simulate(scenario, log=True)
    assert times(result.log, "WorkerDraining") == [20.0]
    assert times(result.log, "WorkerJoined") == [0.0, 0.0, 27.0]
    left = times(result.log, "WorkerLeft")
    assert left and left[0] > 27.0  # the drained worker still held its slot: a third one
    assert result.completed == JOB.items


def test_an_eviction_that_finds_no_live_worker_is_skipped() -> None:
    evictions = tuple(Eviction(10.0 + i, EvictionKind.HARD, 0.0) for i in range(3))
    result = simulate(Scenario(JOB, pool(), Replay(evictions, restart_seconds=5.0), seed=1))
    assert result.evictions == 2  # the third found both workers restarting
    assert result.completed == JOB.items


def test_rate_churn_replacements_wait_for_the_start_time() -> None:
    rate = ChurnRate(30.0, graceful=0.0, rejoin_seconds=5.0, seed=2)
    log = simulate(Scenario(JOB, pool(start=4.0), rate, seed=2), log=True).log
    left, joined = times(log, "WorkerLeft"), times(log, "WorkerJoined")[2:]
    assert left and joined[0] == pytest.approx(left[0] + 9.0)


def test_replays_are_deterministic_and_validated() -> None:
    rate = ChurnRate(40.0, graceful=0.5, rejoin_seconds=5.0, seed=5)
    scenario = Scenario(JOB, pool(3.0), Replay.of_rate(rate, 2, 3600.0, restart_seconds=2.0))
    assert simulate(scenario, log=True).log == simulate(scenario, log=True).log
    with pytest.raises(ConfigError):
        Replay((Eviction(5.0, EvictionKind.HARD, 0.0), Eviction(1.0, EvictionKind.HARD, 0.0)))
    with pytest.raises(ConfigError):
        Pool((GpuClass("cpu", 1),), start_seconds=-1.0)
