"""The simulator drives the real dispatcher: deterministic, exactly once, and timed right."""

from __future__ import annotations

import itertools

import pytest

from pervade.core.churn import ChurnRate
from pervade.core.config import ConfigError, DispatchConfig
from pervade.sim import GpuClass, Job, Loads, Pool, Scenario, SimulationError, simulate, table
from pervade.traces import load_churn

GB = 10**9
JOB = Job(items=3000, work_seconds=2.0, model_bytes=8 * GB)
MIXED = Pool((GpuClass("a100", 6, 1.0), GpuClass("h100", 4, 2.5)))


def churned(seed: int) -> Scenario:
    return Scenario(
        JOB, MIXED, ChurnRate(mean_seconds=200.0, graceful=0.5, rejoin_seconds=10.0), seed
    )


def test_same_seed_same_log_and_another_seed_another() -> None:
    first, again = simulate(churned(7), log=True), simulate(churned(7), log=True)
    assert first.log == again.log
    assert "\n".join(first.log).encode() == "\n".join(again.log).encode()
    assert first.makespan == again.makespan and first.series == again.series
    other = simulate(churned(8), log=True)
    assert other.log != first.log
    # the log really holds the churn: evictions of both kinds happened
    assert any("TaskFailed" in line and "evicted=True" in line for line in first.log)
    assert any("WorkerDraining" in line for line in first.log)


@pytest.mark.parametrize("policy", ["reference", "naive", "static"])
def test_every_policy_is_deterministic_with_several_models(policy: str) -> None:
    jobs = (Job(800, 1.0, 16 * GB, context="a"), Job(800, 0.5, 8 * GB, context="b"))
    pool = Pool((GpuClass("small", 4, 1.0, 20 * GB), GpuClass("big", 2, 2.0)))
    churn = ChurnRate(mean_seconds=150.0, graceful=0.5, rejoin_seconds=10.0)

    def run(seed: int) -> tuple[str, ...]:
        scenario = Scenario(jobs, pool, churn, seed, policy=policy, batch=16, static_gpus=3)
        return simulate(scenario, log=True).log

    first = run(5)
    assert "\n".join(first).encode() == "\n".join(run(5)).encode()
    if policy != "static":  # static ignores the churn: its seed changes nothing
        assert run(6) != first


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_item_completes_exactly_once_under_churn(seed: int) -> None:
    result = simulate(churned(seed))
    assert result.evictions > 5
    assert result.items_rerun > 0  # hard evictions lost running work, which ran again
    assert result.completed == JOB.items


def test_exactly_once_is_checked_per_item() -> None:
    from pervade.sim.engine import Simulation

    sim = Simulation(churned(4))
    result = sim.run()
    assert result.completed == JOB.items
    assert set(sim.done_count) == {1}


def test_static_pool_makespan_is_work_over_speed_plus_one_load() -> None:
    workers, speed = 8, 2.0
    loads = Loads(
        host_seconds=5.0, peer_bandwidth=4 * GB, origin_bandwidth=8 * GB, origin_streams=1
    )
    job = Job(items=4000, work_seconds=0.5, model_bytes=8 * GB)
    pool = Pool((GpuClass("g", workers, speed),), loads, task_overhead_seconds=0.0)
    result = simulate(Scenario(job, pool))
    # One worker reads the origin (1 s); the others wait for it, copy from it (2 s) and
    # build (5 s): the last context is warm at 8 s.
    load = 1.0 + 2.0 + 5.0
    ideal = job.items * job.work_seconds / (workers * speed) + load
    assert result.completed == job.items
    # (the origin reader is warm 2 s before the others: 2 s of its work spreads over all)
    assert ideal - 2.0 / workers <= result.makespan <= ideal * 1.05
    assert result.loads == workers and result.items_rerun == 0
    assert result.origin_bytes == 8 * GB  # one origin reader per artifact
    assert 0.7 < result.goodput.share <= 1.0


def test_naive_loads_per_task_and_is_slower_than_warm_reuse() -> None:
    pool = Pool((GpuClass("g", 8),), Loads(host_seconds=5.0, origin_bandwidth=2 * GB))
    warm = simulate(Scenario(JOB, pool))
    naive = simulate(Scenario(JOB, pool, policy="naive", batch=16))
    assert naive.completed == warm.completed == JOB.items
    assert naive.loads > 3 * warm.loads
    # Every extra build costs at least its host seconds on one of the 8 workers.
    assert naive.makespan > warm.makespan + (naive.loads - warm.loads) * 5.0 / 8
    assert naive.makespan > 1.2 * warm.makespan
    assert naive.origin_bytes > 3 * warm.origin_bytes
    assert naive.goodput.share < warm.goodput.share


def test_late_joiners_copy_from_peers_not_the_origin() -> None:
    # One worker at first; the rest join through a rate churn's refills, once it runs.
    pool = Pool((GpuClass("g", 4),), Loads(origin_bandwidth=1 * GB, origin_streams=1))
    result = simulate(Scenario(Job(3000, 1.0, 8 * GB), pool, ChurnRate(100.0, 1.0, 5.0), seed=5))
    assert result.completed == 3000
    assert result.loads > 4  # replacements built their contexts
    # Only builds with no holder anywhere read the origin.
    assert result.origin_bytes < result.loads * 8 * GB


def test_series_tracks_workers_backlog_and_throughput() -> None:
    result = simulate(churned(1))
    assert result.series
    backlogs = [s.backlog for s in result.series]
    assert backlogs == sorted(backlogs, reverse=True)
    assert max(s.active_workers for s in result.series) <= MIXED.size
    # from time 0 to the last item, each interval's throughput adds up to the job
    series = result.series
    assert series[0].at == 0.0 and series[0].backlog == JOB.items
    assert series[-1].at == result.makespan and series[-1].backlog == 0
    done = sum(b.throughput * (b.at - a.at) for a, b in itertools.pairwise(series))
    assert done == pytest.approx(JOB.items)


def test_a_real_trace_drives_the_pool() -> None:
    churn = load_churn("trace:bamboo-g4dn,fit=900,floor=1,seed=2", workers=MIXED.size)
    result = simulate(Scenario(JOB, MIXED, churn, seed=2), log=True)
    assert result.completed == JOB.items
    assert any("WorkerLeft" in line for line in result.log)


def test_a_pool_that_empties_for_good_is_an_error() -> None:
    churn = load_churn("trace:bamboo-g4dn,fit=30,seed=2", workers=2)
    big = Job(items=100_000, work_seconds=10.0, model_bytes=GB)
    with pytest.raises(SimulationError, match="emptied for good"):
        simulate(Scenario(big, Pool((GpuClass("g", 2),)), churn, sample_seconds=5.0))


def test_dispatch_config_is_the_dispatchers() -> None:
    small = simulate(Scenario(JOB, MIXED, dispatch=DispatchConfig(max_task_items=8)), log=True)
    big = simulate(Scenario(JOB, MIXED, dispatch=DispatchConfig(max_task_items=64)), log=True)
    assert small.completed == big.completed == JOB.items
    assert sum("TaskFinished" in x for x in small.log) > sum("TaskFinished" in x for x in big.log)


def test_table_names_each_scenario() -> None:
    text = table([("static", simulate(Scenario(JOB, MIXED)))])
    assert text.splitlines()[0].split()[0] == "scenario"
    assert text.splitlines()[1].startswith("static")


def test_goodput_books_the_work_once_and_the_losses_apart() -> None:
    # One class at speed 2: accepted work is items x work / 2 whatever the churn.
    pool = Pool((GpuClass("g", 10, 2.0),))
    churn = ChurnRate(mean_seconds=150.0, graceful=0.5, rejoin_seconds=10.0)
    result = simulate(Scenario(JOB, pool, churn, seed=3))
    books = result.goodput
    assert books.useful == pytest.approx(JOB.items * JOB.work_seconds / 2.0)
    assert books.lost > 0  # hard evictions cut running tasks
    assert books.useful + books.loading + books.lost <= books.worker_seconds + 1e-6


def test_several_models_share_small_gpus_by_demoting_idle_ones() -> None:
    jobs = (Job(1500, 0.5, 16 * GB, context="a"), Job(1500, 0.1, 8 * GB, context="b"))
    small = Pool((GpuClass("g", 4, 1.0, 20 * GB),))
    big = Pool((GpuClass("g", 4, 1.0, 80 * GB),))
    tight = simulate(Scenario(jobs, small), log=True)
    roomy = simulate(Scenario(jobs, big), log=True)
    assert tight.completed == roomy.completed == 3000
    assert roomy.demotions == 0
    assert tight.demotions > 0
    demoted = [line for line in tight.log if "STAGED" in line and "Tier.HOST" in line]
    assert len(demoted) >= tight.demotions
    # a model is read from the origin once: its later builds come from peers or host memory
    assert tight.origin_bytes == roomy.origin_bytes == 24 * GB


def test_a_model_too_big_for_every_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="fits no GPU"):
        Scenario(Job(10, 1.0, 100 * GB), Pool((GpuClass("g", 2, memory_bytes=80 * GB),)))
    with pytest.raises(ConfigError, match="own context name"):
        Scenario((Job(10, 1.0, GB), Job(10, 1.0, GB)), MIXED)


def test_the_dispatchers_scaling_advice_is_kept_as_it_changes() -> None:
    # Too few GPUs for the backlog: the dispatcher asks for more, and fewer as it drains.
    churn = ChurnRate(mean_seconds=1800.0, graceful=0.5, rejoin_seconds=120.0)
    result = simulate(Scenario(Job(30_000, 0.5, 8 * GB), Pool((GpuClass("g", 4),)), churn, 1))
    advice = result.advice
    assert advice and advice[0].workers > 4
    assert all(a.at < b.at and a.workers != b.workers for a, b in itertools.pairwise(advice))
