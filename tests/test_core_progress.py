"""Outcomes a running task sent ahead of its report (TaskProgressed): when its worker dies or
the task fails, only the items without an outcome run again, and the goodput books count the
work sent on the way once."""

from __future__ import annotations

import pytest

from pervade.core import (
    Dispatcher,
    FailItems,
    RequeueItems,
    RunTask,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    WorkerLeft,
)
from pervade.core import ItemsSubmitted as Submitted
from pervade.core.accounting import Ledger
from tests.helpers.dispatch import CTX, config, join_warm, of, refs


def _one_task(items: int = 8) -> tuple[Dispatcher, RunTask]:
    d = Dispatcher(config(max_in_flight=1, min_task_items=items, max_task_items=items))
    join_warm(d, "w1")
    [task] = of(RunTask, d.handle(Submitted(CTX, refs("i", items)), 0.0))
    assert len(task.items) == items
    return d, task


def test_a_worker_killed_after_sending_slices_requeues_only_the_rest() -> None:
    d, task = _one_task()
    d.handle(TaskProgressed(task.task, task.items[:2]), 1.0)
    d.handle(TaskProgressed(task.task, task.items[2:5]), 2.0)
    out = d.handle(WorkerLeft("w1"), 3.0)
    assert of(RequeueItems, out) == [RequeueItems(task.task, task.items[5:], "evicted")]
    assert d.stats.requeued_evicted == 3 and d.stats.hard_evictions == 1
    assert d.pending == 3
    rerun = of(RunTask, join_warm(d, "w2", 4.0))
    assert sorted(i for t in rerun for i in t.items) == sorted(task.items[5:])


def test_a_task_lost_with_its_worker_after_sending_slices_requeues_only_the_rest() -> None:
    d, task = _one_task()
    d.handle(TaskProgressed(task.task, task.items[:6]), 1.0)
    out = d.handle(TaskFailed(task.task, "lost with its worker", evicted=True), 2.0)
    assert of(RequeueItems, out) == [RequeueItems(task.task, task.items[6:], "evicted")]
    assert d.stats.requeued_evicted == 2 and d.pending == 0  # w1 took them again at once
    assert d.in_flight == 1


def test_a_task_that_sent_every_outcome_loses_nothing_when_it_dies() -> None:
    d, task = _one_task(4)
    d.handle(TaskProgressed(task.task, task.items), 1.0)
    out = d.handle(TaskFailed(task.task, "lost with its worker", evicted=True), 2.0)
    assert of(RequeueItems, out) == [] and d.stats.requeued_evicted == 0
    assert d.is_idle


def test_a_raising_task_isolates_only_the_items_it_did_not_send() -> None:
    d = Dispatcher(config(max_in_flight=1, min_task_items=4, max_task_items=4, max_failures=1))
    join_warm(d, "w1")
    [task] = of(RunTask, d.handle(Submitted(CTX, refs("i", 4)), 0.0))
    d.handle(TaskProgressed(task.task, task.items[:3]), 1.0)
    # The whole task raised after three outcomes were sent: only the fourth item is
    # suspect, and alone it is charged at once (a budget of one failure).
    out = d.handle(TaskFailed(task.task, "ValueError: bad"), 2.0)
    assert of(FailItems, out) == [FailItems(task.items[3:], "ValueError: bad")]
    assert d.is_idle


def test_progress_is_counted_once_and_ignored_for_tasks_that_ended() -> None:
    d, task = _one_task(4)
    d.handle(TaskProgressed(task.task, task.items[:2]), 1.0)
    d.handle(TaskProgressed(task.task, task.items[:2]), 1.5)  # the same slice again
    d.handle(TaskProgressed(task.task, ("not-in-this-task",)), 1.6)
    d.handle(TaskFinished(task.task), 2.0)
    assert d.is_idle and d.in_flight == 0
    d.handle(TaskProgressed(task.task, task.items[2:]), 3.0)  # late: after the report
    assert d.is_idle
    # The in-flight counts came back to zero exactly: a new backlog is sized from them.
    [fresh] = of(RunTask, d.handle(Submitted(CTX, refs("j", 4)), 4.0))
    assert len(fresh.items) == 4


def test_the_ledger_books_sent_work_once_and_charges_a_loss_from_the_last_slice() -> None:
    books = Ledger()
    books.joined("w1", 0.0)
    books.started("t1", "w1", 0.0)
    books.progressed("t1", 4.0, ran_seconds=4.0, kept=8, ran=8)
    books.progressed("t1", 8.0, ran_seconds=4.0, kept=6, ran=8)  # two were duplicates
    books.left("w1", 10.0)  # killed 2 s into the third slice
    got = books.snapshot(10.0)
    assert got.useful == pytest.approx(4.0 + 3.0)
    assert got.lost == pytest.approx(1.0 + 2.0)

    books.joined("w2", 10.0)
    books.started("t2", "w2", 10.0)
    books.progressed("t2", 14.0, ran_seconds=4.0, kept=8, ran=8)
    # The report carries every outcome and every second of the task; the 8 outcomes sent on
    # the way come back as duplicates and are not booked again.
    books.reported("t2", 18.0, ran_seconds=8.0, kept=8, ran=16, failed_seconds=0.0)
    got = books.snapshot(18.0)
    assert got.useful == pytest.approx(7.0 + 8.0)
    assert got.lost == pytest.approx(3.0)
