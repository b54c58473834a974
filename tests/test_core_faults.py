"""Pure tests: partial task reports, restarts of unusable worker processes, and the goodput
ledger."""

from __future__ import annotations

import pytest

from pervade.core import (
    ContextState,
    ContextStateChanged,
    DispatchConfig,
    Dispatcher,
    FailItems,
    ItemRef,
    ItemsSubmitted,
    RequeueItems,
    RestartWorker,
    RunTask,
    TaskFinished,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.accounting import Ledger

CTX = "ctx"


def warm_dispatcher(workers: tuple[str, ...], items: int, size: int = 8) -> Dispatcher:
    d = Dispatcher(
        DispatchConfig(max_in_flight=1, min_task_items=size, max_task_items=size, max_failures=2)
    )
    for worker in workers:
        d.handle(WorkerJoined(worker), 0.0)
        d.handle(ContextStateChanged(worker, CTX, ContextState.WARM, 1.0), 0.0)
    return d


def submit(d: Dispatcher, n: int) -> list[RunTask]:
    out = d.handle(ItemsSubmitted(CTX, tuple(ItemRef(f"i{k}") for k in range(n))), 0.0)
    return [x for x in out if isinstance(x, RunTask)]


def test_a_partial_report_keeps_what_finished_and_isolates_only_the_raising_slice() -> None:
    d = warm_dispatcher(("w1",), 8)
    (task,) = submit(d, 8)
    ids = task.items
    out = d.handle(TaskFinished(task.task, (), ids[4:], "ValueError: bad"), 1.0)
    requeued = [x for x in out if isinstance(x, RequeueItems)]
    assert [r.items for r in requeued] == [ids[4:]], "only the raising slice goes back"
    # The raising slice is bisected: the next task runs half of it, alone.
    assert [x.items for x in out if isinstance(x, RunTask)] == [ids[4:6]]
    assert d.pending == 2 and d.in_flight == 1


def test_a_lone_item_that_keeps_raising_is_failed_and_no_neighbour_is_charged() -> None:
    d = warm_dispatcher(("w1",), 1, size=1)
    (task,) = submit(d, 1)
    out = d.handle(TaskFinished(task.task, (), task.items, "boom"), 1.0)
    (again,) = [x for x in out if isinstance(x, RunTask)]
    out = d.handle(TaskFinished(again.task, (), again.items, "boom"), 2.0)
    assert [x.items for x in out if isinstance(x, FailItems)] == [task.items]


def test_items_handed_back_after_a_broken_context_are_not_charged() -> None:
    d = warm_dispatcher(("w1",), 8)
    (task,) = submit(d, 8)
    ids = task.items
    out = d.handle(TaskFinished(task.task, ids[2:], ids[:2], "ContextPoisoned: gone"), 1.0)
    reasons = {r.reason for r in out if isinstance(r, RequeueItems)}
    assert "stopped" in reasons
    assert d.stats.requeued_stopped == 6 and d.stats.requeued_graceful == 0


def test_a_restart_request_stops_work_on_that_worker_and_is_not_an_eviction() -> None:
    d = warm_dispatcher(("w1", "w2"), 32)
    tasks = submit(d, 32)
    on_w1 = next(t for t in tasks if t.worker == "w1")
    out = d.handle(TaskFinished(on_w1.task, (), on_w1.items, "RuntimeError: CUDA error", True), 1)
    assert RestartWorker("w1", "RuntimeError: CUDA error") in out
    assert all(x.worker != "w1" for x in out if isinstance(x, RunTask))
    assert d.departure("w1") == "restarted"
    # Another report asking again does not ask twice.
    assert d.stats.restarts == 1
    out = d.handle(WorkerLeft("w1"), 2.0)
    assert d.stats.hard_evictions == 0 and d.stats.graceful_evictions == 0
    d.handle(WorkerJoined("w1-new"), 3.0)
    out = d.handle(ContextStateChanged("w1-new", CTX, ContextState.WARM, 1.0), 3.0)
    assert any(x.worker == "w1-new" for x in out if isinstance(x, RunTask))


def test_departure_names_how_a_worker_leaves() -> None:
    d = warm_dispatcher(("w1",), 0)
    assert d.departure("w1") == "evicted"
    assert d.departure("unknown") == "evicted"


# -- the goodput ledger ------------------------------------------------------------------


def test_goodput_splits_worker_time_into_useful_loading_lost_and_idle() -> None:
    books = Ledger()
    books.joined("w1", 0.0)
    books.loaded("w1", 10.0, 10.0)  # a context build from 0 to 10
    books.started("t1", "w1", 10.0)
    books.reported("t1", 30.0, ran_seconds=18.0, kept=9, ran=9, failed_seconds=0.0)
    books.started("t2", "w1", 30.0)
    books.reported("t2", 40.0, ran_seconds=8.0, kept=3, ran=4, failed_seconds=1.0)  # a dup
    books.started("t3", "w1", 35.0)  # queued behind t2: work on it began at 40
    books.left("w1", 55.0)  # killed 15 s into t3
    got = books.snapshot(100.0)
    assert got.worker_seconds == pytest.approx(55.0)
    assert got.useful == pytest.approx(18.0 + 6.0)
    assert got.loading == pytest.approx(10.0)
    assert got.lost == pytest.approx(2.0 + 1.0 + 15.0)
    assert got.idle == pytest.approx(55.0 - 24.0 - 10.0 - 18.0)
    assert got.share == pytest.approx(24.0 / 55.0)


def test_a_lost_task_is_charged_from_the_later_of_its_start_and_the_last_report() -> None:
    books = Ledger()
    books.joined("w1", 0.0)
    books.joined("w2", 0.0)
    books.started("t1", "w1", 5.0)
    books.lost("t1", 9.0)  # the whole task raised after 4 s
    books.started("t2", "w2", 1.0)
    books.started("t3", "w2", 2.0)
    books.reported("t2", 6.0, ran_seconds=5.0, kept=1, ran=1, failed_seconds=0.0)
    books.lost("t3", 8.0)  # died with its worker: t3 ran from 6 to 8
    books.lost("t3", 9.0)  # reported twice: counted once
    got = books.snapshot(10.0)
    assert got.lost == pytest.approx(4.0 + 2.0)
    assert got.worker_seconds == pytest.approx(20.0)


def test_workers_present_count_until_the_snapshot_and_unknown_reports_are_harmless() -> None:
    books = Ledger()
    assert books.snapshot(5.0).share == 0.0
    books.reported("ghost", 1.0, ran_seconds=1.0, kept=1, ran=1, failed_seconds=0.0)
    books.joined("w1", 2.0)
    books.joined("w1", 3.0)  # a second sighting does not move the join
    assert books.snapshot(6.0).worker_seconds == pytest.approx(4.0)
