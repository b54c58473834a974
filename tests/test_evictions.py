"""Workers killed or frozen mid-run: the run costs time, never results."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dask
import psutil
import pytest
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster

import pervade
from pervade import DispatchConfig
from pervade.runtime.cluster import TTL_CHECK_SECONDS, WORKER_TTL, connect
from pervade.runtime.membership import worker_addresses
from pervade.runtime.stats import RunStats
from tests.helpers import workloads

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
ITEMS = 160
# One failure alone fails an item: were an eviction charged to the items it interrupted, they
# would end as errors.
SMALL_TASKS = DispatchConfig(min_task_items=4, max_task_items=4, max_failures=1)


@pytest.fixture
def client() -> Iterator[Client]:
    # A frozen worker must be declared gone quickly in tests; pervade's clusters take 15-20 s.
    with (
        dask.config.set({"distributed.scheduler.worker-ttl": "4s"}),
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2)
        yield c


def _worker_pids(client: Client) -> dict[str, int]:
    return client.run(os.getpid)  # type: ignore[no-any-return]


def _run_with(
    client: Client, strike: object, dispatch: DispatchConfig = SMALL_TASKS
) -> tuple[dict[str, pervade.Result], RunStats]:
    """Run ITEMS slow items; call `strike()` once a quarter of them are done."""
    context = pervade.context(workloads.process_context, args={"tag": "evict"})
    items = [(f"e{n:03d}", {"n": n}) for n in range(ITEMS)]
    results: dict[str, pervade.Result] = {}
    seen: Counter[str] = Counter()
    stats_box: list[RunStats] = []
    struck = False
    for result in pervade.map(
        workloads.describe,
        items,
        context=context,
        options={"delay": 0.01},
        client=client,
        dispatch=dispatch,
        observer=stats_box.append,
    ):
        seen[result.id] += 1
        results[result.id] = result
        if not struck and len(results) >= ITEMS // 4:
            struck = True
            strike()  # type: ignore[operator]
    assert struck, "the run ended before the eviction"
    assert set(seen.values()) == {1}, "an item was accepted twice"
    assert set(results) == {i for i, _ in items}
    assert all(r.ok for r in results.values()), "an eviction must never become an item error"
    return results, stats_box[-1]


def test_a_worker_killed_mid_task_costs_time_not_results(client: Client) -> None:
    victim_pid = sorted(_worker_pids(client).values())[0]

    def kill() -> None:
        os.kill(victim_pid, signal.SIGKILL)

    results, stats = _run_with(client, kill)
    pids = {r.value["pid"] for r in results.values()}
    assert victim_pid in pids, "the killed worker had done some items before it died"
    assert stats.requeued > 0, "its unfinished items ran again elsewhere"


def _freeze_one(client: Client, dispatch: DispatchConfig) -> tuple[RunStats, float]:
    victim_pid = sorted(_worker_pids(client).values())[0]
    frozen: list[int] = []

    def freeze() -> None:
        os.kill(victim_pid, signal.SIGSTOP)
        frozen.append(victim_pid)

    started = time.monotonic()
    try:
        _, stats = _run_with(client, freeze, dispatch)
    finally:
        for pid in frozen:  # the nanny may have killed it already once it was declared gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return stats, time.monotonic() - started


def test_a_worker_killed_mid_task_redoes_only_the_slice_it_was_in(
    client: Client, tmp_path: Path
) -> None:
    context = pervade.context(workloads.process_context, args={"tag": "slices"})
    items = [(f"s{n:03d}", {"n": n}) for n in range(64)]
    results: dict[str, pervade.Result] = {}
    stats_box: list[RunStats] = []
    for result in pervade.map(
        workloads.dies_once_after,
        items,
        context=context,
        # The first worker to finish 27 items dies: 27 items into a task of 32, which runs
        # in slices of 8, so three slices (24 items) ended before the kill.
        options={"log_dir": str(tmp_path), "after": 27, "delay": 0.1},
        client=client,
        dispatch=DispatchConfig(
            min_task_items=32, max_task_items=32, max_failures=1, speculate=False
        ),
        observer=stats_box.append,
    ):
        assert result.id not in results, "an item was accepted twice"
        results[result.id] = result
    assert set(results) == {i for i, _ in items} and all(r.ok for r in results.values())
    assert (tmp_path / "killed").exists()
    computed = Counter(line for log in tmp_path.glob("*.log") for line in log.read_text().split())
    assert set(computed) == set(results)
    redone = sorted(item for item, times in computed.items() if times > 1)
    # The three finished slices were accepted as they ended; only the fourth slice's three
    # items, computed when the worker died, ran again.
    assert len(redone) == 3, redone
    stats = stats_box[-1]
    assert stats.hard_evictions == 1
    # The summary counts whole slices: the fourth (8 items, 3 of them computed) had its work
    # lost; the three before it did not, nor a task the worker held but had not begun.
    assert stats.rerun_items == 8


def test_a_frozen_worker_is_declared_gone_and_its_items_run_elsewhere(client: Client) -> None:
    # Without tail copies the frozen worker's tasks wait until it is declared gone.
    no_copies = DispatchConfig(min_task_items=4, max_task_items=4, max_failures=1, speculate=False)
    stats, seconds = _freeze_one(client, no_copies)
    assert stats.requeued > 0
    assert seconds < 120


def test_a_cluster_pervade_starts_declares_a_frozen_worker_gone_within_30_seconds() -> None:
    with connect(workers=2) as cluster_client:
        cluster_client.wait_for_workers(2)
        address, pid = sorted(_worker_pids(cluster_client).items())[0]
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            while address in worker_addresses(cluster_client):
                assert time.monotonic() - frozen < 60, "the frozen worker was never dropped"
                time.sleep(0.2)
            gone = time.monotonic() - frozen
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert gone <= 30
    # Dropped at the first check after the TTL (checked every second, not once per TTL,
    # which could take twice the TTL), then killed by its nanny within 4 s.
    assert gone < parse_timedelta(WORKER_TTL) + TTL_CHECK_SECONDS + 5


def test_tail_copies_finish_a_frozen_workers_tasks_before_it_is_declared_gone(
    client: Client,
) -> None:
    stats, seconds = _freeze_one(client, SMALL_TASKS)
    # The healthy worker copied the frozen one's tasks once the backlog ran dry and their
    # expected end had passed; the run did not wait for the worker TTL (4 s here).
    assert stats.copies > 0
    assert seconds < 4


def test_sigterm_drains_the_worker_and_recomputes_no_finished_item(
    client: Client, tmp_path: Path
) -> None:
    victim_pid = sorted(_worker_pids(client).values())[0]
    context = pervade.context(workloads.process_context, args={"tag": "drain"})
    items = [(f"d{n:03d}", {"n": n}) for n in range(ITEMS)]
    stats_box: list[RunStats] = []
    results: dict[str, pervade.Result] = {}
    for result in pervade.map(
        workloads.logged,
        items,
        context=context,
        options={"log_dir": str(tmp_path), "delay": 0.02},
        client=client,
        # Every computation is counted below: no tail copies, which redo items on purpose.
        dispatch=DispatchConfig(
            min_task_items=16, max_task_items=16, max_failures=1, speculate=False
        ),
        observer=stats_box.append,
    ):
        results[result.id] = result
        if len(results) == ITEMS // 4:
            os.kill(victim_pid, signal.SIGTERM)
    assert set(results) == {i for i, _ in items} and all(r.ok for r in results.values())
    computed = Counter(line for log in tmp_path.glob("*.log") for line in log.read_text().split())
    assert set(computed) == set(results)
    assert max(computed.values()) == 1, "a graceful eviction recomputed a finished item"
    stats = stats_box[-1]
    assert stats.graceful_evictions == 1 and stats.hard_evictions == 0
    assert stats.requeued_evicted == 0
    assert victim_pid in {r.value["pid"] for r in results.values()}


def test_a_worker_joining_mid_run_gets_work_within_seconds() -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(1)
        first_pid = next(iter(_worker_pids(client).values()))
        context = pervade.context(workloads.process_context, args={"tag": "join"})
        items = [(f"j{n:03d}", {"n": n}) for n in range(ITEMS)]
        seen_at: dict[int, float] = {}
        scaled = False
        joined_at = 0.0  # when the scheduler first listed the new worker
        for result in pervade.map(
            workloads.describe,
            items,
            context=context,
            options={"delay": 0.03},
            client=client,
            dispatch=SMALL_TASKS,
        ):
            seen_at.setdefault(result.value["pid"], time.monotonic())
            if not scaled:
                cluster.scale(2)
                scaled = True
            if not joined_at and len(worker_addresses(client)) == 2:
                joined_at = time.monotonic()
        joined = [pid for pid in seen_at if pid != first_pid]
        assert joined, "the worker that joined mid-run never got work"
        assert joined_at, "the scheduler never listed the new worker"
        # Its first result, building its context included, came within seconds of joining.
        assert seen_at[joined[0]] - joined_at < 5


def test_a_lone_draining_worker_leaves_as_soon_as_its_reports_are_collected() -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(1)
        victim = psutil.Process(next(iter(_worker_pids(client).values())))
        left_at: list[float] = []

        def watch() -> None:
            # No other worker sends anything meanwhile: the drain ends only because the
            # driver let go of the victim's last report, not because another message came.
            with contextlib.suppress(psutil.NoSuchProcess):
                while victim.status() != psutil.STATUS_ZOMBIE:
                    time.sleep(0.05)
            left_at.append(time.monotonic())
            cluster.scale(2)  # a new slot, so that the run can finish

        context = pervade.context(workloads.process_context, args={"tag": "lone"})
        items = [(f"l{n:03d}", {"n": n}) for n in range(40)]
        termed_at = 0.0
        results: dict[str, pervade.Result] = {}
        for result in pervade.map(
            workloads.describe,
            items,
            context=context,
            options={"delay": 0.05},
            client=client,
            dispatch=DispatchConfig(min_task_items=16, max_task_items=16, max_failures=1),
        ):
            results[result.id] = result
            if not termed_at:
                termed_at = time.monotonic()
                victim.send_signal(signal.SIGTERM)
                threading.Thread(target=watch, daemon=True).start()
        assert set(results) == {i for i, _ in items} and all(r.ok for r in results.values())
        assert left_at, "the drained worker never left"
        # Its slice (8 items, 0.4 s), its report and the hand-over; the grace period is 60 s.
        assert left_at[0] - termed_at < 10
