"""Pure tests of the dispatcher: events in, decisions out, asserted on the decisions.

Placement on live contexts, task sizing and ordering by cost here; evictions and failures,
randomized schedules and configuration in tests/test_core_dispatch_*.py. The shared helpers
live in tests/helpers/dispatch.py and stay importable from here, as other tests expect."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from pervade.core import (
    ContextState,
    ContextStateChanged,
    DispatchConfig,
    Dispatcher,
    ItemRef,
    ItemsSubmitted,
    LoadContext,
    RunTask,
    TaskFinished,
    WorkerJoined,
)
from pervade.core.filling import START_ITEMS
from tests.helpers.dispatch import CTX, config, join_warm, of, refs

# -- placement on live contexts ---------------------------------------------------------


def test_tasks_go_only_to_workers_with_a_live_context() -> None:
    d = Dispatcher(config())
    out = d.handle(WorkerJoined("w1"), 0.0)
    out += d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0)
    assert of(RunTask, out) == []
    assert out == [LoadContext("w1", CTX)]
    # Building states are not live: still no task.
    for state in (ContextState.FETCHING, ContextState.LOADING):
        assert of(RunTask, d.handle(ContextStateChanged("w1", CTX, state), 1.0)) == []
    assert d.pending == 4
    out = d.handle(ContextStateChanged("w1", CTX, ContextState.WARM, 2.0), 2.0)
    [task] = of(RunTask, out)
    assert task.worker == "w1"
    assert task.context == CTX
    assert sorted(task.items) == ["i0", "i1", "i2", "i3"]
    assert d.load_seconds == {CTX: [2.0]}


def test_busy_counts_as_live() -> None:
    d = Dispatcher(config())
    d.handle(WorkerJoined("w1"), 0.0)
    d.handle(ContextStateChanged("w1", CTX, ContextState.BUSY), 0.0)
    out = d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0)
    assert [t.worker for t in of(RunTask, out)] == ["w1"]
    assert of(LoadContext, out) == []


def test_failed_context_is_not_live() -> None:
    d = Dispatcher(config(max_load_failures=5))
    d.handle(WorkerJoined("w1"), 0.0)
    d.handle(ItemsSubmitted(CTX, refs("i", 4)), 0.0)
    out = d.handle(ContextStateChanged("w1", CTX, ContextState.FAILED), 1.0)
    assert of(RunTask, out) == []
    assert out == [LoadContext("w1", CTX)]  # a retry, not a task


def test_building_worker_gets_no_second_load() -> None:
    d = Dispatcher(config())
    d.handle(WorkerJoined("w1"), 0.0)
    assert d.handle(ItemsSubmitted(CTX, refs("a", 4)), 0.0) == [LoadContext("w1", CTX)]
    assert d.handle(ItemsSubmitted(CTX, refs("b", 4)), 1.0) == []
    assert d.handle(ContextStateChanged("w1", CTX, ContextState.FETCHING), 1.5) == []


def test_cold_worker_loads_only_when_warm_slots_are_full() -> None:
    d = Dispatcher(config(max_in_flight=2))
    # The cold worker joined first: joining order must not beat warmth.
    d.handle(WorkerJoined("cold"), 0.0)
    join_warm(d, "warm", 0.5)
    out = d.handle(ItemsSubmitted(CTX, refs("a", 8)), 1.0)
    assert [t.worker for t in of(RunTask, out)] == ["warm", "warm"]
    assert of(LoadContext, out) == []  # two warm slots took all the work
    assert d.pending == 0

    out = d.handle(ItemsSubmitted(CTX, refs("b", 1)), 2.0)
    assert of(RunTask, out) == []
    assert of(LoadContext, out) == [LoadContext("cold", CTX)]
    assert d.pending == 1


def test_warm_slot_freed_is_used_before_a_cold_load() -> None:
    d = Dispatcher(config())
    join_warm(d, "warm")
    d.handle(WorkerJoined("cold"), 0.0)
    [t1] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("a", 4)), 0.0))
    # A task finishes and new work arrives at once: the warm slot takes it, no load.
    d.handle(TaskFinished(t1.task), 1.0)
    out = d.handle(ItemsSubmitted(CTX, refs("b", 4)), 1.0)
    assert [t.worker for t in of(RunTask, out)] == ["warm"]
    assert of(LoadContext, out) == []


def test_at_most_max_in_flight_tasks_per_worker() -> None:
    d = Dispatcher(config(max_in_flight=3))
    join_warm(d, "w1")
    out = d.handle(ItemsSubmitted(CTX, refs("i", 40)), 0.0)
    tasks = of(RunTask, out)
    assert len(tasks) == 3
    assert {t.worker for t in tasks} == {"w1"}
    assert d.in_flight == 3
    # Nothing new arrives while the worker is full.
    assert of(RunTask, d.handle(ContextStateChanged("w1", CTX, ContextState.BUSY), 1.0)) == []
    assert of(RunTask, d.handle(ItemsSubmitted(CTX, refs("j", 4)), 1.0)) == []


def test_task_finished_frees_a_slot_and_pulls_the_next_task() -> None:
    d = Dispatcher(config(max_in_flight=2))
    join_warm(d, "w1")
    first = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 20)), 0.0))
    assert len(first) == 2
    out = d.handle(TaskFinished(first[0].task), 1.0)
    [nxt] = of(RunTask, out)
    assert nxt.worker == "w1"
    assert nxt.task not in {t.task for t in first}
    assert set(nxt.items).isdisjoint(first[0].items + first[1].items)
    assert d.in_flight == 2
    assert d.pending == 20 - 12


# -- task sizing -------------------------------------------------------------------------


def drain_sizes(d: Dispatcher, first: Sequence[RunTask]) -> list[int]:
    """Finish tasks one by one; the sizes of every task started, in order."""
    queue = list(first)
    sizes = []
    while queue:
        task = queue.pop(0)
        sizes.append(len(task.items))
        queue += of(RunTask, d.handle(TaskFinished(task.task), 0.0))
    return sizes


def test_task_size_is_bounded_and_shrinks_with_the_backlog() -> None:
    d = Dispatcher(config(min_task_items=4, max_task_items=16, tasks_per_slot=2))
    join_warm(d, "w1")
    first = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("i", 100)), 0.0))
    sizes = drain_sizes(d, first)
    assert sum(sizes) == 100
    assert d.is_idle
    remaining = 100
    for size in sizes:
        assert size <= 16
        assert size >= min(4, remaining)
        remaining -= size
    assert sizes[0] == 16  # capped by max_task_items
    assert sizes == sorted(sizes, reverse=True)  # never grows as the backlog shrinks
    assert any(4 < s < 16 for s in sizes)  # sized from the backlog in between the bounds
    assert sizes[-2] == 4  # a small backlog still gets min_task_items per task


def test_task_size_scales_down_with_more_worker_slots() -> None:
    def first_size(workers: int) -> int:
        d = Dispatcher(
            DispatchConfig(max_in_flight=1, max_task_items=1000, tasks_per_slot=2, adaptive=False)
        )
        for k in range(workers):
            join_warm(d, f"w{k}")
        out = d.handle(ItemsSubmitted(CTX, refs("i", 120)), 0.0)
        return len(of(RunTask, out)[0].items)

    # The fixed rule (no adaptive sizing, no batch size given):
    assert first_size(1) == 60  # 120 items / (1 slot * 2 tasks per slot)
    assert first_size(4) == 15  # 120 items / (4 slots * 2 tasks per slot)


def test_adaptive_sizing_starts_small_until_a_speed_is_measured() -> None:
    def first_size(workers: int, items: int) -> int:
        d = Dispatcher(DispatchConfig(max_in_flight=1, tasks_per_slot=2))
        for k in range(workers):
            join_warm(d, f"w{k}")
        out = d.handle(ItemsSubmitted(CTX, refs("i", items)), 0.0)
        return len(of(RunTask, out)[0].items)

    assert first_size(1, 10_000) == START_ITEMS
    assert first_size(4, 120) == 15  # never more than the fair share


# -- ordering by cost --------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [12, 3], ids=["one-submit", "small-submits"])
def test_longest_items_first_and_similar_costs_grouped(chunk: int) -> None:
    costs = list(range(1, 13))
    random.Random(7).shuffle(costs)
    items = [ItemRef(f"c{cost}", cost) for cost in costs]
    d = Dispatcher(config())
    d.handle(WorkerJoined("w1"), 0.0)
    for start in range(0, len(items), chunk):
        d.handle(ItemsSubmitted(CTX, tuple(items[start : start + chunk])), 0.0)
    first = of(RunTask, d.handle(ContextStateChanged("w1", CTX, ContextState.WARM), 0.0))
    groups = []
    queue = list(first)
    while queue:
        task = queue.pop(0)
        groups.append(sorted(int(i[1:]) for i in task.items))
        queue += of(RunTask, d.handle(TaskFinished(task.task), 1.0))
    assert groups == [[9, 10, 11, 12], [5, 6, 7, 8], [1, 2, 3, 4]]
