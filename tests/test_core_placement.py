"""Pure tests of tier-aware placement: which context an idle worker builds, when a cold
build is not worth starting, and prefetches (StageContext) of the next context's files."""

from __future__ import annotations

from pervade.core import (
    ContextState,
    ContextStateChanged,
    Dispatcher,
    ItemsSubmitted,
    LoadContext,
    RunTask,
    StageContext,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
)
from pervade.core.cache_policy import Tier
from pervade.core.placement import STAGE_TIMEOUT
from tests.test_core_dispatcher import CTX, config, join_warm, of, refs

B, C, Z = "ctx-b", "ctx-c", "ctx-z"


def busy_on_z(d: Dispatcher, *workers: str) -> list[RunTask]:
    """Workers warm on context Z, each running one task of it (4 items a task)."""
    for worker in workers:
        d.handle(WorkerJoined(worker), 0.0)
        d.handle(ContextStateChanged(worker, Z, ContextState.WARM), 0.0)
    out = d.handle(ItemsSubmitted(Z, refs("z", 4 * len(workers))), 0.0)
    tasks = of(RunTask, out)
    assert sorted(t.worker for t in tasks) == sorted(workers)
    return tasks


def test_old_state_events_need_no_tier() -> None:
    assert ContextStateChanged("w", CTX, ContextState.WARM, 1.0).tier is None


def test_an_idle_worker_builds_its_staged_context_before_one_with_more_backlog() -> None:
    d = Dispatcher(config())
    [task] = busy_on_z(d, "w1")
    d.handle(ItemsSubmitted(CTX, refs("a", 8)), 0.0)
    d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0)
    d.handle(ContextStateChanged("w1", B, ContextState.STAGED, tier=Tier.HOST), 0.0)
    out = d.handle(TaskFinished(task.task), 1.0)
    assert of(LoadContext, out) == [LoadContext("w1", B)]


def test_a_peer_copy_beats_the_origin_unless_the_origin_context_has_far_more_work() -> None:
    def chosen(ctx_items: int) -> list[LoadContext]:
        d = Dispatcher(config())
        tasks = busy_on_z(d, "w1", "w2")
        d.handle(ContextStateChanged("w2", B, ContextState.STAGED), 0.0)  # w2 can serve B
        d.handle(ItemsSubmitted(CTX, refs("a", ctx_items)), 0.0)
        d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0)
        on_w1 = next(t for t in tasks if t.worker == "w1")
        return of(LoadContext, d.handle(TaskFinished(on_w1.task), 1.0))

    assert chosen(6) == [LoadContext("w1", B)]
    assert chosen(400) == [LoadContext("w1", CTX)]


def test_a_fresh_job_builds_on_every_idle_worker_and_spreads_over_contexts() -> None:
    d = Dispatcher(config())
    d.handle(ItemsSubmitted(CTX, refs("a", 40)), 0.0)
    d.handle(ItemsSubmitted(B, refs("b", 40)), 0.0)
    loads = [x for w in ("w1", "w2", "w3", "w4") for x in d.handle(WorkerJoined(w), 0.0)]
    assert len(of(LoadContext, loads)) == 4
    assert [x.context for x in of(LoadContext, loads)] == [CTX, B, CTX, B]


def test_no_cold_build_when_the_warm_workers_finish_first() -> None:
    d = Dispatcher(config())
    d.handle(WorkerJoined("w1"), 0.0)
    d.handle(ContextStateChanged("w1", CTX, ContextState.WARM, 30.0, Tier.ORIGIN), 0.0)
    [first] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("a", 4)), 0.0))
    d.handle(TaskFinished(first.task), 1.0)  # w1 runs 4 items/s
    d.handle(ItemsSubmitted(CTX, refs("b", 12)), 1.0)  # 12 items left: 3 s for w1
    # A peer load is estimated at 30 s * 20/60 = 10 s: w1 is done long before.
    assert of(LoadContext, d.handle(WorkerJoined("w2"), 1.0)) == []
    # A host copy loads in about 2.5 s: worth it.
    d.handle(WorkerJoined("w3"), 1.0)
    out = d.handle(ContextStateChanged("w3", CTX, ContextState.STAGED, tier=Tier.HOST), 1.0)
    assert of(LoadContext, out) == [LoadContext("w3", CTX)]
    # With far more work left the peer load pays off too.
    out = d.handle(ItemsSubmitted(CTX, refs("c", 400)), 1.0)
    assert of(LoadContext, out) == [LoadContext("w2", CTX)]


def test_a_cold_build_starts_when_the_warm_workers_go() -> None:
    d = Dispatcher(config())
    d.handle(WorkerJoined("w1"), 0.0)
    d.handle(ContextStateChanged("w1", CTX, ContextState.WARM, 30.0, Tier.ORIGIN), 0.0)
    [first] = of(RunTask, d.handle(ItemsSubmitted(CTX, refs("a", 4)), 0.0))
    d.handle(TaskFinished(first.task), 1.0)
    d.handle(ItemsSubmitted(CTX, refs("b", 8)), 1.0)
    assert of(LoadContext, d.handle(WorkerJoined("w2"), 1.0)) == []
    out = d.handle(WorkerDraining("w1"), 2.0)  # its speed no longer counts
    assert of(LoadContext, out) == [LoadContext("w2", CTX)]


# -- prefetch ---------------------------------------------------------------------------


def test_a_busy_worker_stages_the_next_context_one_at_a_time() -> None:
    d = Dispatcher(config())
    join_warm(d, "w1")
    d.handle(ItemsSubmitted(CTX, refs("a", 8)), 0.0)  # w1 busy, 4 more waiting
    out = d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0)
    assert out == [StageContext("w1", B)]
    assert d.prefetches == 1
    assert of(StageContext, d.handle(ItemsSubmitted(C, refs("c", 9)), 0.0)) == []
    # The copy is there: the next stage goes out, for the context not held yet.
    out = d.handle(ContextStateChanged("w1", B, ContextState.STAGED, tier=Tier.HOST), 1.0)
    assert out == [StageContext("w1", C)]


def test_a_prefetch_copying_does_not_make_the_worker_building() -> None:
    d = Dispatcher(config())
    [task] = busy_on_z(d, "w1")
    assert d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0) == [StageContext("w1", B)]
    d.handle(ContextStateChanged("w1", B, ContextState.FETCHING), 0.5)
    out = d.handle(TaskFinished(task.task), 1.0)
    assert of(LoadContext, out) == [LoadContext("w1", B)]  # the build takes over the copy


def test_a_failed_stage_is_no_load_failure_and_is_not_asked_again() -> None:
    d = Dispatcher(config(max_load_failures=1))
    [task] = busy_on_z(d, "w1")
    assert d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0) == [StageContext("w1", B)]
    out = d.handle(ContextStateChanged("w1", B, ContextState.FAILED), 1.0)
    assert of(StageContext, out) == []
    # With max_load_failures=1 a counted failure would forbid the build (and abort).
    out = d.handle(TaskFinished(task.task), 2.0)
    assert out == [LoadContext("w1", B)]


def test_no_prefetch_for_idle_draining_or_single_context_workers() -> None:
    d = Dispatcher(config())
    join_warm(d, "w1")
    join_warm(d, "w2")
    out = d.handle(ItemsSubmitted(CTX, refs("a", 40)), 0.0)
    assert of(StageContext, out) == []  # everyone holds the only context
    d.handle(WorkerDraining("w1"), 1.0)
    out = d.handle(ItemsSubmitted(B, refs("b", 4)), 1.0)
    assert out == [StageContext("w2", B)]
    idle = Dispatcher(config())
    idle.handle(WorkerJoined("w1"), 0.0)
    assert idle.handle(ItemsSubmitted(B, refs("b", 4)), 0.0) == [LoadContext("w1", B)]


def test_a_late_staged_report_does_not_end_a_build_asked_since() -> None:
    d = Dispatcher(config())
    [task] = busy_on_z(d, "w1")
    assert d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0) == [StageContext("w1", B)]
    assert d.handle(TaskFinished(task.task), 1.0) == [LoadContext("w1", B)]
    d.handle(ItemsSubmitted(C, refs("c", 4)), 1.0)
    out = d.handle(ContextStateChanged("w1", B, ContextState.STAGED, tier=Tier.DISK), 2.0)
    assert of(LoadContext, out) == []  # w1 is still building B: no second build


def test_a_stage_that_never_reports_is_given_up_after_a_while() -> None:
    d = Dispatcher(config())
    busy_on_z(d, "w1")
    assert d.handle(ItemsSubmitted(B, refs("b", 4)), 0.0) == [StageContext("w1", B)]
    assert d.handle(ItemsSubmitted(C, refs("c", 4)), 10.0) == []  # still copying B
    out = d.handle(ItemsSubmitted(C, refs("d", 4)), STAGE_TIMEOUT + 1.0)
    assert out == [StageContext("w1", C)]  # B is not asked again: it failed silently once
