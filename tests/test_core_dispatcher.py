"""Pure tests of the dispatcher: events in, decisions out, asserted on the decisions."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TypeVar

import pytest

from pervade.core import (
    Abort,
    Artifact,
    CancelTask,
    ContextSpec,
    ContextState,
    ContextStateChanged,
    Decision,
    DispatchConfig,
    Dispatcher,
    FailItems,
    ItemRef,
    ItemsSubmitted,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    StageContext,
    TaskFailed,
    TaskFinished,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.cache_policy import Tier
from pervade.core.config import ConfigError
from pervade.core.filling import START_ITEMS

CTX = "ctx-a"
OTHER = "ctx-other"
TIERS = (None, *Tier)
D = TypeVar("D")


def of(kind: type[D], decisions: Iterable[Decision]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def refs(prefix: str, n: int, cost: int = 1) -> tuple[ItemRef, ...]:
    return tuple(ItemRef(f"{prefix}{k}", cost) for k in range(n))


def join_warm(d: Dispatcher, worker: str, now: float = 0.0) -> list[Decision]:
    """A worker joins and reports the context live, as after a LoadContext."""
    out = d.handle(WorkerJoined(worker), now)
    assert not of(RunTask, out)
    return out + d.handle(ContextStateChanged(worker, CTX, ContextState.WARM, 1.0), now)


def config(**overrides: int) -> DispatchConfig:
    values = {
        "max_in_flight": 1,
        "min_task_items": 4,
        "max_task_items": 4,
        "tasks_per_slot": 1,
        "max_failures": 3,
        "max_load_failures": 2,
    }
    values.update(overrides)
    return DispatchConfig(**values)


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


# -- randomized schedules ----------------------------------------------------------------


def run_schedule(
    seed: int, seen: Counter[str] | None = None
) -> tuple[set[str], Counter[str], Counter[str], set[str], set[str]]:
    """Drive the dispatcher with random joins, leaves, loads, stages, finishes and failures,
    over two contexts.

    Plays the runtime: carries out decisions and checks each against the rules as it goes.
    Returns every item id, how often each item finished, how often each failed (FailItems),
    and the culprit items (those that make any task holding them raise). `seen` counts the
    decisions by kind.
    """
    rng = random.Random(seed)
    low = rng.randint(1, 6)
    cfg = DispatchConfig(
        max_in_flight=rng.randint(1, 3),
        min_task_items=low,
        max_task_items=rng.randint(low, 12),
        tasks_per_slot=rng.randint(1, 4),
        max_failures=rng.randint(1, 4),
        max_load_failures=50,
        adaptive=rng.random() < 0.7,
        speculate=rng.random() < 0.7,
    )
    d = Dispatcher(cfg)
    items = [ItemRef(f"i{k}", rng.randint(1, 40)) for k in range(rng.randint(10, 150))]
    unsubmitted = list(items)
    # Most items need CTX; some seeds add a second context, which brings prefetches.
    second = rng.random() < 0.5
    context_of = {i.id: OTHER if second and rng.random() < 0.3 else CTX for i in items}
    culprits = {i.id for i in rng.sample(items, k=rng.randint(0, 3))}

    live: set[tuple[str, str]] = set()  # (worker, context)
    loading: set[tuple[str, str]] = set()
    staging: dict[str, str] = {}  # worker -> context its prefetch copies
    present: set[str] = set()
    running: dict[str, RunTask] = {}
    started: dict[str, RunTask] = {}
    cancelled: list[str] = []
    restarting: set[str] = set()
    copied: set[str] = set()  # items that ran in a speculative copy as well
    finished: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    joined = 0
    now = 0.0

    def apply(out: list[Decision]) -> None:
        for decision in out:
            if seen is not None:
                seen[type(decision).__name__] += 1
            match decision:
                case RunTask():
                    where = (decision.worker, decision.context)
                    assert where in live, f"task on a worker without context: {decision}"
                    assert all(context_of[i] == decision.context for i in decision.items)
                    assert decision.worker not in restarting, f"task on a dying process: {decision}"
                    assert decision.task not in running
                    assert decision.items
                    twins = [t for t in running.values() if set(t.items) & set(decision.items)]
                    if twins:  # a speculative copy: the same items as one running task
                        assert cfg.speculate and len(twins) == 1, (decision, twins)
                        assert twins[0].items == decision.items
                        assert twins[0].worker != decision.worker
                        copied.update(decision.items)
                        if seen is not None:
                            seen["copy"] += 1
                    running[decision.task] = started[decision.task] = decision
                    on_worker = sum(1 for t in running.values() if t.worker == decision.worker)
                    assert on_worker <= cfg.max_in_flight
                case LoadContext(worker=worker, context=context):
                    assert worker in present and (worker, context) not in live
                    assert not any(w == worker for w, _ in loading), "two builds at once"
                    loading.add((worker, context))
                    staging.pop(worker, None)  # the build takes over the copy, if any
                case StageContext(worker=worker, context=context):
                    assert worker in present and worker not in restarting
                    assert worker not in staging, f"a second stage outstanding: {decision}"
                    assert (worker, context) not in live
                    staging[worker] = context
                case CancelTask(task=task):
                    del running[task]
                    cancelled.append(task)
                case RequeueItems(task=task, items=ids):
                    assert set(ids) <= set(started[task].items)
                case FailItems(items=ids):
                    failed.update(ids)
                case RestartWorker(worker=worker):
                    assert worker in present and worker not in restarting
                    restarting.add(worker)
                case Abort():
                    raise AssertionError(f"seed {seed}: unexpected abort: {decision}")

    def join() -> None:
        nonlocal joined
        name = f"w{joined}"
        joined += 1
        present.add(name)
        warm = rng.random() < 0.2
        if warm:
            live.add((name, CTX))
        apply(d.handle(WorkerJoined(name, (CTX,) if warm else ()), now))

    for _step in range(20_000):
        now += rng.random()
        if not unsubmitted and d.is_idle:
            break
        if not present:
            join()
            continue
        roll = rng.random()
        if unsubmitted and roll < 0.1:
            chunk = [unsubmitted.pop() for _ in range(min(len(unsubmitted), rng.randint(1, 30)))]
            for context in (CTX, OTHER):
                part = tuple(i for i in chunk if context_of[i.id] == context)
                if part:
                    apply(d.handle(ItemsSubmitted(context, part), now))
        elif roll < 0.16 and joined < 40:
            join()
        elif roll < 0.2 or (restarting and roll < 0.25):
            gone = rng.choice(sorted(restarting or present))
            present.discard(gone)
            live -= {k for k in live if k[0] == gone}
            loading -= {k for k in loading if k[0] == gone}
            staging.pop(gone, None)
            restarting.discard(gone)
            apply(d.handle(WorkerLeft(gone), now))
        elif roll < 0.3 and loading:
            worker, context = key = rng.choice(sorted(loading))
            loading.discard(key)
            ok = rng.random() < 0.9
            if ok:
                live.add(key)
            state = ContextState.WARM if ok else ContextState.FAILED
            seconds = rng.uniform(0.1, 20.0) if ok else None
            tier = rng.choice(TIERS) if ok else None
            apply(d.handle(ContextStateChanged(worker, context, state, seconds, tier), now))
        elif roll < 0.32 and staging:
            worker = rng.choice(sorted(staging))
            context = staging.pop(worker)
            if rng.random() < 0.3:  # the copy under way, as a worker may report it
                apply(d.handle(ContextStateChanged(worker, context, ContextState.FETCHING), now))
            ok = rng.random() < 0.8
            state = ContextState.STAGED if ok else ContextState.FAILED
            tier = rng.choice((Tier.HOST, Tier.DISK)) if ok else None
            apply(d.handle(ContextStateChanged(worker, context, state, tier=tier), now))
        elif roll < 0.325 and live:
            # A worker demotes an idle live context (GPU to HOST) to make room for another.
            idle = sorted(k for k in live if not any(t.worker == k[0] for t in running.values()))
            if idle:
                worker, context = key = rng.choice(idle)
                live.discard(key)
                staged = ContextStateChanged(worker, context, ContextState.STAGED, tier=Tier.HOST)
                apply(d.handle(staged, now))
        elif roll < 0.33 and cancelled:
            # A late report of a task the dispatcher already gave up on.
            task = rng.choice(cancelled)
            late = TaskFinished(task) if rng.random() < 0.5 else TaskFailed(task, "late")
            apply(d.handle(late, now))
        elif running:
            task = running.pop(rng.choice(sorted(running)))
            if rng.random() < 0.1:
                apply(d.handle(TaskFailed(task.task, "preempted", evicted=True), now))
            elif culprits & set(task.items) and rng.random() < 0.5:
                apply(d.handle(TaskFailed(task.task, "ValueError: culprit"), now))
            elif culprits & set(task.items) or rng.random() < 0.05:
                # The worker ran the task in slices: some finished, the slice holding the
                # culprit (or a broken device) raised, and the rest may be handed back.
                cut = rng.randint(0, len(task.items))
                done = [i for i in task.items[:cut] if i not in culprits]
                raised = [i for i in task.items[cut:] if i in culprits] or list(task.items[cut:])
                raised += [i for i in task.items[:cut] if i in culprits]
                back = [i for i in task.items if i not in done and i not in raised]
                if not raised and back:
                    raised, back = back[:1], back[1:]
                finished.update(done)
                restart = not culprits & set(raised) and rng.random() < 0.5
                report = TaskFinished(task.task, tuple(back), tuple(raised), "boom", restart)
                apply(d.handle(report, now))
            else:
                finished.update(task.items)
                apply(d.handle(TaskFinished(task.task), now))
    else:
        raise AssertionError(f"seed {seed}: no end after 20000 steps, {d.pending} pending")
    assert not running
    return {i.id for i in items}, finished, failed, culprits, copied


@pytest.mark.parametrize("seed", range(50))
def test_random_schedule_every_item_ends_exactly_once(seed: int) -> None:
    ids, finished, failed, culprits, copied = run_schedule(seed)
    assert set(finished) | set(failed) == ids, "an item was lost"
    for item in ids:
        if item in copied:
            # Two copies may both get through some items (one handed the rest back); the
            # journal keeps the first outcome. Never a failure beside a result, never two.
            assert failed[item] <= 1 and not (finished[item] and failed[item]), item
        else:
            assert finished[item] + failed[item] == 1, (item, finished[item], failed[item])
    assert not culprits & set(finished)
    assert culprits <= set(failed)


def test_random_schedules_exercise_failures_and_evictions() -> None:
    # Guards the property test above against degenerate schedules.
    total_failed = total_finished = 0
    seen: Counter[str] = Counter()
    for seed in range(50):
        _, finished, failed, _, _ = run_schedule(seed, seen)
        total_failed += len(failed)
        total_finished += len(finished)
    assert total_failed > 0
    assert total_finished > 1000
    assert seen["StageContext"] > 10 and seen["LoadContext"] > 50 and seen["RestartWorker"]
    assert seen["copy"] > 5


# -- configuration and context identity --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_in_flight", 0),
        ("min_task_items", -1),
        ("max_task_items", 2.5),
        ("tasks_per_slot", True),
        ("max_failures", "3"),
        ("max_load_failures", 0),
    ],
)
def test_dispatch_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"dispatch\.{field} must be a positive integer"):
        DispatchConfig(**{field: value})  # type: ignore[arg-type]


def test_dispatch_config_rejects_min_above_max() -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.min_task_items \(9\).*max_task_items \(8\)"):
        DispatchConfig(min_task_items=9, max_task_items=8)
    assert DispatchConfig(min_task_items=8, max_task_items=8).max_task_items == 8


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def spec(**overrides: object) -> ContextSpec:
    values: dict[str, object] = {
        "loader": "pkg.mod:build",
        "args": {"dtype": "float32", "batch": 16},
        "artifacts": (Artifact("model", "/shared/a/model", "sha-1"),),
        "label": "tiny",
    }
    values.update(overrides)
    return ContextSpec(**values)  # type: ignore[arg-type]


def test_context_id_is_stable() -> None:
    first = spec()
    assert first.id == spec().id
    assert len(first.id) == 64 and int(first.id, 16) >= 0
    assert first.short_id == first.id[:12]
    # Argument order does not matter: the identity is canonical JSON.
    assert spec(args={"batch": 16, "dtype": "float32"}).id == first.id
    # A pinned value: the id must not drift between processes or releases, or workers
    # would stop recognising contexts they already hold warm.
    assert first.id == "d7d2e2745ed14a4664cf71c957925ae5cab259026d77e33bc3cb3b2dddd41a1b"


def test_context_id_depends_on_loader_args_and_digests_only() -> None:
    base = spec().id
    assert spec(loader="pkg.mod:other").id != base
    assert spec(args={"dtype": "bfloat16", "batch": 16}).id != base
    assert spec(artifacts=(Artifact("model", "/shared/a/model", "sha-2"),)).id != base
    assert spec(artifacts=(Artifact("weights", "/shared/a/model", "sha-1"),)).id != base
    # Not part of the identity: where the artifact lives, and the human label.
    assert spec(artifacts=(Artifact("model", "/other/path", "sha-1"),)).id == base
    assert spec(label="another name").id == base


def test_context_artifact_order_does_not_change_id() -> None:
    a, b = Artifact("model", "/m", "d1"), Artifact("tok", "/t", "d2")
    assert spec(artifacts=(a, b)).id == spec(artifacts=(b, a)).id


@pytest.mark.parametrize("loader", ["pkg.mod", ":build", "pkg.mod:", "", "build"])
def test_context_rejects_bad_loader(loader: str) -> None:
    with pytest.raises(ConfigError, match=r"context\.loader must look like"):
        spec(loader=loader)


def test_context_rejects_non_json_args() -> None:
    with pytest.raises(ConfigError, match=r"context\.args must be JSON values"):
        spec(args={"path": object()})
    with pytest.raises(ConfigError, match=r"context\.args must be JSON values"):
        spec(args={"ids": {1, 2}})


def test_context_rejects_clashing_names() -> None:
    with pytest.raises(ConfigError, match="model"):
        spec(args={"model": "x"})
    with pytest.raises(ConfigError, match="model"):
        spec(artifacts=(Artifact("model", "/a", "1"), Artifact("model", "/b", "2")))


def test_display_name_uses_label_or_loader() -> None:
    assert spec().display_name == "tiny"
    unnamed = spec(label="")
    assert unnamed.display_name == f"pkg.mod:build [{unnamed.short_id}]"
