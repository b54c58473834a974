"""Dispatcher under evictions, raising tasks, failing context builds and stale events."""

from __future__ import annotations

from collections import Counter

from pervade.core import (
    Abort,
    CancelTask,
    ContextState,
    ContextStateChanged,
    Decision,
    Dispatcher,
    FailItems,
    ItemRef,
    ItemsSubmitted,
    LoadContext,
    RequeueItems,
    RunTask,
    TaskFailed,
    TaskFinished,
    WorkerJoined,
    WorkerLeft,
)
from tests.helpers.dispatch import CTX, config, join_warm, of, refs

# -- evictions ---------------------------------------------------------------------------


def test_worker_left_cancels_requeues_and_runs_elsewhere_without_a_failure() -> None:
    d = Dispatcher(config(max_failures=2))
    join_warm(d, "w1")
    [t1] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0))
    join_warm(d, "w2")  # no work left for it yet

    out = d.handle(WorkerLeft("w1"), 1.0)
    assert CancelTask(t1.task) in out
    assert RequeueItems(t1.task, t1.items, "evicted") in out
    [t2] = of(RunTask, out)
    assert t2.worker == "w2"
    assert sorted(t2.items) == sorted(t1.items)
    assert of(FailItems, out) == []
    assert d.workers == ("w2",)

    # Evicted again, then it raises once: with max_failures=2 that first raise must be
    # the items' first counted failure, so they are retried, not failed.
    join_warm(d, "w3")
    out = d.handle(WorkerLeft("w2"), 2.0)
    [t3] = of(RunTask, out)
    out = d.handle(TaskFailed(t3.task, "boom"), 3.0)
    assert of(FailItems, out) == []
    [requeue] = of(RequeueItems, out)
    assert sorted(requeue.items) == sorted(t1.items)
    assert "boom" in requeue.reason


def test_task_failed_evicted_never_burns_the_failure_budget() -> None:
    d = Dispatcher(config(max_failures=1))
    join_warm(d, "w1")
    [task] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0))
    for attempt in range(5):
        out = d.handle(TaskFailed(task.task, "worker lost", evicted=True), float(attempt))
        assert of(FailItems, out) == []
        assert of(RequeueItems, out) == [RequeueItems(task.task, task.items, "evicted")]
        [again] = of(RunTask, out)
        # Still one task of all four items: an eviction is not a reason to isolate them.
        assert sorted(again.items) == sorted(task.items)
        task = again
    assert d.handle(TaskFinished(task.task), 9.0) == []
    assert d.is_idle


def test_a_raising_batch_is_bisected_until_the_culprit_fails_alone() -> None:
    d = Dispatcher(config(max_in_flight=2, max_failures=3))
    join_warm(d, "w1")
    queue = of(RunTask, d.handle(ItemsSubmitted(CTX, (*refs("ok", 3), ItemRef("bad"))), 0.0))
    assert len(queue) == 1 and "bad" in queue[0].items
    finished: Counter[str] = Counter()
    failed: list[FailItems] = []
    requeued: list[RequeueItems] = []
    raised_with_bad = 0
    sizes_after_first = []
    while queue:
        task = queue.pop(0)
        if raised_with_bad:
            sizes_after_first.append(len(task.items))
        if "bad" in task.items:
            raised_with_bad += 1
            out = d.handle(TaskFailed(task.task, "ValueError: bad input"), 1.0)
        else:
            finished.update(task.items)
            out = d.handle(TaskFinished(task.task), 1.0)
        failed += of(FailItems, out)
        requeued += of(RequeueItems, out)
        queue += of(RunTask, out)
    assert d.is_idle
    assert failed == [FailItems(("bad",), "ValueError: bad input")]
    # 4 items -> halves of 2 -> "bad" alone; only its solo raises count: max_failures of them.
    assert raised_with_bad == 2 + 3
    assert finished == Counter({"ok0": 1, "ok1": 1, "ok2": 1})
    assert set(sizes_after_first) == {1, 2}  # retries run in halves, then alone
    assert sorted(requeued[0].items) == ["bad", "ok0", "ok1", "ok2"]
    assert all(r.reason == "task raised: ValueError: bad input" for r in requeued)


def test_max_failures_one_fails_at_the_first_raise_of_a_lone_item() -> None:
    d = Dispatcher(config(max_failures=1))
    join_warm(d, "w1")
    [task] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 1)), 0.0))
    out = d.handle(TaskFailed(task.task, "boom"), 1.0)
    assert of(FailItems, out) == [FailItems(task.items, "boom")]
    assert of(RequeueItems, out) == []
    assert d.is_idle


def test_isolation_survives_eviction_of_solo_tasks() -> None:
    d = Dispatcher(config(max_in_flight=2, max_failures=3))
    join_warm(d, "w0")
    running: dict[str, RunTask] = {}
    finished: set[str] = set()
    failed: list[FailItems] = []

    def apply(out: list[Decision]) -> None:
        failed.extend(of(FailItems, out))
        for decision in out:
            if isinstance(decision, RunTask):
                running[decision.task] = decision
            elif isinstance(decision, CancelTask):
                del running[decision.task]

    apply(d.handle(ItemsSubmitted(CTX, (ItemRef("good"), ItemRef("bad"))), 0.0))
    evictions_left, workers, now = 2, 1, 1.0
    while running:
        now += 1.0
        if evictions_left and all(len(t.items) == 1 for t in running.values()):
            # The isolated items' worker is preempted; a fresh worker takes over.
            evictions_left -= 1
            [worker] = {t.worker for t in running.values()}
            apply(d.handle(WorkerLeft(worker), now))
            apply(join_warm(d, f"w{workers}", now))
            workers += 1
            continue
        task = running.pop(min(running))
        if "bad" in task.items:
            apply(d.handle(TaskFailed(task.task, "boom"), now))
        else:
            finished.update(task.items)
            apply(d.handle(TaskFinished(task.task), now))
    assert d.is_idle
    assert failed == [FailItems(("bad",), "boom")]
    assert finished == {"good"}


def test_work_spreads_over_idle_warm_workers_before_queueing() -> None:
    d = Dispatcher(config(max_in_flight=2))
    join_warm(d, "w1")
    join_warm(d, "w2")
    out = d.handle(ItemsSubmitted(CTX, refs("i", 8)), 1.0)
    assert sorted(t.worker for t in of(RunTask, out)) == ["w1", "w2"]


# -- context build failures --------------------------------------------------------------


def test_context_failing_everywhere_aborts() -> None:
    d = Dispatcher(config(max_load_failures=2))
    d.handle(WorkerJoined("w1"), 0.0)
    d.handle(WorkerJoined("w2"), 0.0)
    out = d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0)
    assert sorted(of(LoadContext, out), key=lambda x: x.worker) == [
        LoadContext("w1", CTX),
        LoadContext("w2", CTX),
    ]

    def fail(worker: str) -> list[Decision]:
        return d.handle(ContextStateChanged(worker, CTX, ContextState.FAILED), 1.0)

    assert fail("w1") == [LoadContext("w1", CTX)]  # first failure: try again
    assert fail("w1") == []  # w1 gave up on this context; w2 still building
    assert fail("w2") == [LoadContext("w2", CTX)]
    out = fail("w2")
    assert of(LoadContext, out) == []
    [abort] = of(Abort, out)
    assert CTX[:12] in abort.reason
    assert "every worker" in abort.reason
    # A fresh worker is asked to build it: then there is no reason to abort any more.
    out = d.handle(WorkerJoined("w3"), 2.0)
    assert out == [LoadContext("w3", CTX)]


def test_worker_joined_with_live_context_gets_tasks_without_a_load() -> None:
    d = Dispatcher(config())
    d.handle(ItemsSubmitted(CTX, refs("i", 8)), 0.0)
    out = d.handle(WorkerJoined("w1", live_contexts=(CTX,)), 1.0)
    assert of(LoadContext, out) == []
    [task] = of(RunTask, out)
    assert task.worker == "w1"
    assert d.live_contexts() == 1


# -- stale events ------------------------------------------------------------------------


def test_stale_events_for_unknown_tasks_and_workers_are_ignored() -> None:
    d = Dispatcher(config(max_in_flight=1, max_failures=1))
    join_warm(d, "w1")
    [task] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 8)), 0.0))
    before = (d.pending, d.in_flight, d.workers)
    assert d.handle(TaskFinished("nope"), 1.0) == []
    assert d.handle(TaskFailed("nope", "boom"), 1.0) == []
    assert d.handle(TaskFailed("nope", "gone", evicted=True), 1.0) == []
    assert d.handle(WorkerLeft("ghost"), 1.0) == []
    assert d.handle(ContextStateChanged("ghost", CTX, ContextState.WARM), 1.0) == []
    # A second join of a known worker does not reset it (it still holds its task).
    assert d.handle(WorkerJoined("w1"), 1.0) == []
    assert (d.pending, d.in_flight, d.workers) == before
    assert d.task_worker(task.task) == "w1"

    # Once the worker is gone, late reports of its cancelled task change nothing either.
    d.handle(WorkerLeft("w1"), 2.0)
    after_leave = (d.pending, d.in_flight)
    assert d.handle(TaskFinished(task.task), 3.0) == []
    assert d.handle(TaskFailed(task.task, "boom"), 3.0) == []
    assert (d.pending, d.in_flight) == after_leave == (8, 0)
    assert d.task_worker(task.task) is None
