"""Graceful eviction in the dispatcher: a draining worker gets no new work, hands back what
it did not start, and its departure counts as graceful; evictions never cost an item budget."""

from __future__ import annotations

from pervade.core import (
    FailItems,
    RequeueItems,
    RunTask,
    TaskFailed,
    TaskFinished,
    WorkerDraining,
    WorkerLeft,
)
from pervade.core import ItemsSubmitted as Submitted
from tests.test_core_dispatcher import CTX, Dispatcher, config, join_warm, of, refs


def test_a_draining_worker_gets_no_new_task_and_its_handed_back_items_run_elsewhere() -> None:
    d = Dispatcher(config(max_in_flight=1))
    join_warm(d, "w1")
    [first] = of(RunTask, d.handle(Submitted(CTX, refs("i", 8)), 0.0))
    assert first.worker == "w1"
    assert of(RunTask, d.handle(WorkerDraining("w1"), 1.0)) == []
    # The running task stops after its first two items and hands the other two back.
    out = d.handle(TaskFinished(first.task, unfinished=first.items[2:]), 2.0)
    assert of(RequeueItems, out) == [RequeueItems(first.task, first.items[2:], "drained")]
    assert of(RunTask, out) == []  # nobody else is warm yet: w1 must not get them
    later = join_warm(d, "w2", 3.0)
    tasks = of(RunTask, later)
    assert tasks and all(t.worker == "w2" for t in tasks)
    assert set(first.items[2:]) <= {i for t in tasks for i in t.items}
    assert d.stats.requeued_graceful == 2 and d.stats.requeued_evicted == 0
    d.handle(WorkerLeft("w1"), 4.0)
    assert d.stats.graceful_evictions == 1 and d.stats.hard_evictions == 0


def test_a_worker_leaving_without_notice_is_a_hard_eviction() -> None:
    d = Dispatcher(config(max_in_flight=2))
    join_warm(d, "w1")
    tasks = of(RunTask, d.handle(Submitted(CTX, refs("i", 8)), 0.0))
    out = d.handle(WorkerLeft("w1"), 1.0)
    assert sorted(r.task for r in of(RequeueItems, out)) == sorted(t.task for t in tasks)
    assert d.stats.hard_evictions == 1 and d.stats.requeued_evicted == 8


def test_evictions_never_charge_the_failure_budget() -> None:
    d = Dispatcher(config(max_in_flight=1, max_failures=1))
    for round_ in range(5):  # five evictions of the same lone item, then it fails for real
        worker = f"w{round_}"
        out = join_warm(d, worker, float(round_))
        if round_ == 0:
            out += d.handle(Submitted(CTX, refs("i", 1)), 0.0)
        [task] = of(RunTask, out)
        d.handle(TaskFailed(task.task, "KilledWorker", evicted=True), float(round_))
        d.handle(WorkerLeft(worker), float(round_))
    [task] = of(RunTask, join_warm(d, "last", 9.0))
    out = d.handle(TaskFailed(task.task, "ValueError: bad"), 9.0)
    assert of(FailItems, out) == [FailItems(("i0",), "ValueError: bad")]
