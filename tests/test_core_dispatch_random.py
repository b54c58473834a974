"""Dispatcher under randomized schedules: every item ends exactly once."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pervade.core import (
    Abort,
    CancelTask,
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
from tests.helpers.dispatch import CTX, OTHER, TIERS

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
