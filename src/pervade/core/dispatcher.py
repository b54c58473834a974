"""The dispatcher: which worker runs which items under which context, and when to build one.

`Dispatcher.handle(event, now)` is the only entry point; it mutates the dispatcher's own
bookkeeping and returns decisions for the caller to carry out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pervade.core.backlog import Backlog
from pervade.core.config import DispatchConfig
from pervade.core.decisions import (
    Abort,
    CancelTask,
    Decision,
    FailItems,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    StageContext,
)
from pervade.core.events import (
    ContextStateChanged,
    Event,
    ItemsSubmitted,
    TaskFailed,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.items import ItemRef
from pervade.core.load_costs import LoadCosts, Throughput
from pervade.core.placement import (
    STAGE_TIMEOUT,
    STAGED_DEFAULT,
    Demand,
    WorkerState,
    choose_build,
    choose_stage,
)
from pervade.core.states import ContextState


@dataclass(slots=True)
class DispatchStats:
    """What churn cost so far, as the dispatcher saw it."""

    hard_evictions: int = 0  # workers gone without notice (killed, frozen, node lost)
    graceful_evictions: int = 0  # workers that drained before leaving
    requeued_evicted: int = 0  # item attempts lost with a worker that left without notice
    requeued_graceful: int = 0  # items a draining worker handed back unstarted
    restarts: int = 0  # worker processes replaced because their device became unusable
    requeued_stopped: int = 0  # items handed back unstarted when a task's context broke


@dataclass(frozen=True, slots=True)
class _Task:
    id: str
    worker: str
    context: str
    items: tuple[ItemRef, ...]
    started: float
    group: bool  # an isolation task: its items run together and alone


class Dispatcher:
    def __init__(self, config: DispatchConfig | None = None) -> None:
        self.config = config or DispatchConfig()
        self._workers: dict[str, WorkerState] = {}
        self._tasks: dict[str, _Task] = {}
        self._backlogs: dict[str, Backlog] = {}
        self._failures: dict[str, int] = {}
        self._task_seq = 0
        self.stats = DispatchStats()
        self.load_seconds: dict[str, list[float]] = {}
        self.costs = LoadCosts()  # load seconds by tier, from finished builds
        self.rates = Throughput()  # items/s of warm workers, from finished tasks
        self.prefetches = 0  # StageContext decisions made

    # -- read-only views -------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(len(b) for b in self._backlogs.values())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def is_idle(self) -> bool:
        return self.pending == 0 and not self._tasks

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._workers)

    def live_contexts(self) -> int:
        """Contexts live across all workers (one worker with one model counts one)."""
        return sum(
            1 for w in self._workers.values() for state in w.contexts.values() if state.is_live
        )

    def departure(self, worker: str) -> str:
        """How `worker` is leaving, should it leave now: restarted, drained or evicted."""
        found = self._workers.get(worker)
        if found is not None and found.restarting:
            return "restarted"
        return "drained" if found is not None and found.draining else "evicted"

    def task_worker(self, task: str) -> str | None:
        found = self._tasks.get(task)
        return found.worker if found else None

    # -- the entry point -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        match event:
            case ItemsSubmitted(context=context, items=items):
                self._backlogs.setdefault(context, Backlog()).add(items)
            case WorkerJoined(worker=worker, live_contexts=live):
                if worker not in self._workers:
                    self._workers[worker] = WorkerState(
                        worker, now, contexts=dict.fromkeys(live, ContextState.WARM)
                    )
            case WorkerLeft(worker=worker):
                decisions += self._worker_left(worker)
            case WorkerDraining(worker=worker):
                found = self._workers.get(worker)
                if found is not None:
                    found.draining = True
            case ContextStateChanged():
                self._context_changed(event)
            case TaskFinished():
                decisions += self._task_finished(event, now)
            case TaskFailed():
                decisions += self._task_failed(event)
        decisions += self._fill(now)
        return decisions

    # -- event handlers --------------------------------------------------------------

    def _worker_left(self, name: str) -> list[Decision]:
        kind = self.departure(name)
        worker = self._workers.pop(name, None)
        if worker is None:
            return []
        self.rates.forget(name)
        decisions: list[Decision] = []
        if kind == "drained":
            self.stats.graceful_evictions += 1
        elif kind == "evicted":  # a restart was counted when it was asked for
            self.stats.hard_evictions += 1
        for task_id in sorted(worker.tasks):
            task = self._tasks.pop(task_id)
            self._requeue(task.context, task.items, task.group)
            # A draining worker leaves only unstarted tasks behind: it waits for the running
            # one (within its grace period).
            if kind == "drained":
                self.stats.requeued_graceful += len(task.items)
            else:
                self.stats.requeued_evicted += len(task.items)
            decisions.append(CancelTask(task_id))
            reason = "restarted" if kind == "restarted" else "evicted"
            decisions.append(RequeueItems(task_id, _ids(task.items), reason))
        return decisions

    def _context_changed(self, event: ContextStateChanged) -> None:
        worker = self._workers.get(event.worker)
        if worker is None:
            return
        context, state = event.context, event.state
        staging = worker.staging == context
        if staging and state is not ContextState.FETCHING:
            worker.staging = None  # the stage ended, one way or another
        if state is ContextState.FAILED and staging:
            # The background copy failed, not a build: no load failure is charged, but this
            # worker is not asked to stage this context again (it would fail the same way).
            worker.stage_failures.add(context)
            if worker.contexts.get(context) is not ContextState.STAGED:
                worker.contexts[context] = ContextState.ABSENT
            return
        if (
            staging
            and state is ContextState.FETCHING
            and not worker.contexts.get(context, ContextState.ABSENT).is_building
        ):
            return  # the prefetch copying: nothing is being built on the device
        if state is ContextState.STAGED:
            worker.staged_tiers[context] = event.tier or worker.staged_tiers.get(
                context, STAGED_DEFAULT
            )
            if worker.contexts.get(context, ContextState.ABSENT).is_building:
                return  # a prefetch's late report: the build asked since goes on
        worker.contexts[context] = state
        if not state.is_building and state is not ContextState.STAGED:
            worker.staged_tiers.pop(context, None)
        if state is ContextState.FAILED:
            worker.load_failures[context] = worker.load_failures.get(context, 0) + 1
        if event.load_seconds is not None and state.is_live:
            self.load_seconds.setdefault(context, []).append(event.load_seconds)
            self.costs.record(context, event.tier, event.load_seconds)

    def _task_finished(self, event: TaskFinished, now: float) -> list[Decision]:
        task = self._tasks.pop(event.task, None)
        if task is None:
            return []  # a late duplicate of a task already given up on
        worker = self._workers.get(task.worker)
        if worker is not None:
            worker.tasks.discard(task.id)
        ran = len(task.items) - len(event.unfinished) - len(event.failed)
        self.rates.finished(task.worker, task.context, ran, task.started, now)
        decisions: list[Decision] = []
        if event.restart and worker is not None and not worker.restarting:
            worker.restarting = True
            self.stats.restarts += 1
            decisions.append(RestartWorker(worker.name, event.error))
        handed_back, failed = set(event.unfinished), set(event.failed)
        for item in task.items:
            if item.id not in handed_back and item.id not in failed:
                self._failures.pop(item.id, None)
        if handed_back:
            back = tuple(item for item in task.items if item.id in handed_back)
            self._requeue(task.context, back, task.group)
            draining = worker is not None and worker.draining
            if draining:
                self.stats.requeued_graceful += len(back)
            else:
                self.stats.requeued_stopped += len(back)
            decisions.append(
                RequeueItems(task.id, _ids(back), "drained" if draining else "stopped")
            )
        if failed:
            faulty = tuple(item for item in task.items if item.id in failed)
            decisions += self._isolate(task, faulty, event.error)
        return decisions

    def _task_failed(self, event: TaskFailed) -> list[Decision]:
        task = self._tasks.pop(event.task, None)
        if task is None:
            return []
        worker = self._workers.get(task.worker)
        if worker is not None:
            worker.tasks.discard(task.id)
        if event.evicted:
            self._requeue(task.context, task.items, task.group)
            self.stats.requeued_evicted += len(task.items)
            return [RequeueItems(task.id, _ids(task.items), "evicted")]
        return self._isolate(task, task.items, event.error)

    def _isolate(self, task: _Task, items: tuple[ItemRef, ...], error: str) -> list[Decision]:
        """Items whose batch raised `error`: find the one to blame."""
        backlog = self._backlogs.setdefault(task.context, Backlog())
        reason = f"task raised: {error}"
        if len(items) > 1:
            # Someone in the batch raised, or the batch as a whole did (out of memory, say):
            # run the halves apart, and again, until the item that raises runs alone. Only an
            # item that fails alone is charged, so innocent neighbours never lose budget.
            half = len(items) // 2
            backlog.add_group(items[:half])
            backlog.add_group(items[half:])
            return [RequeueItems(task.id, _ids(items), reason)]
        (item,) = items
        count = self._failures.get(item.id, 0) + 1
        if count >= self.config.max_failures:
            self._failures.pop(item.id, None)
            return [FailItems((item.id,), error)]
        self._failures[item.id] = count
        backlog.add_group(items)
        return [RequeueItems(task.id, (item.id,), reason)]

    def _requeue(self, context: str, items: tuple[ItemRef, ...], group: bool) -> None:
        """Put items of a task that did not finish back; a group stays a group."""
        backlog = self._backlogs.setdefault(context, Backlog())
        if group:
            backlog.add_group(items)
        else:
            backlog.add(items)

    # -- placement -------------------------------------------------------------------

    def _fill(self, now: float) -> list[Decision]:
        wanted = [c for c, b in self._backlogs.items() if len(b)]
        if not wanted:
            return []
        decisions: list[Decision] = []
        # Workers with a live context first, least loaded first: warm slots are used
        # before any new context is built.
        order = sorted(
            self._workers.values(),
            key=lambda w: (not any(w.is_live(c) for c in wanted), len(w.tasks), w.joined),
        )
        for context in wanted:
            backlog = self._backlogs[context]
            # One task at a time to the least loaded live worker, so that work spreads over
            # idle warm workers before it queues behind a busy one.
            while len(backlog):
                ready = [
                    w
                    for w in order
                    if w.is_live(context)
                    and w.takes_work
                    and len(w.tasks) < self.config.max_in_flight
                ]
                if not ready:
                    break
                worker = min(ready, key=lambda w: len(w.tasks))
                decisions.append(self._start_task(worker, context, backlog, now))
        demands = self._demands(wanted)
        for worker in order:
            if worker.tasks or not worker.takes_work or worker.is_building:
                continue
            build = choose_build(
                worker,
                demands,
                self._workers,
                self.costs,
                self.rates,
                self.config.max_load_failures,
            )
            if build is None:
                continue
            if worker.staging == build:
                worker.staging = None  # the build takes over the copy the stage began
            worker.contexts[build] = ContextState.LOADING
            decisions.append(LoadContext(worker.name, build))
        for context in wanted:
            if self._workers and all(
                w.load_failures.get(context, 0) >= self.config.max_load_failures
                for w in self._workers.values()
            ):
                decisions.append(
                    Abort(
                        f"context {context[:12]} failed to build on every worker "
                        f"({len(self._workers)}), {self.config.max_load_failures} times each"
                    )
                )
        for worker in order:
            if worker.staging is not None and now - worker.staging_since > STAGE_TIMEOUT:
                worker.stage_failures.add(worker.staging)
                worker.staging = None
            staged = choose_stage(worker, demands, self.config.max_load_failures)
            if staged is not None:
                worker.staging, worker.staging_since = staged, now
                self.prefetches += 1
                decisions.append(StageContext(worker.name, staged))
        return decisions

    def _demands(self, wanted: list[str]) -> list[Demand]:
        in_flight = dict.fromkeys(wanted, 0)
        for task in self._tasks.values():
            if task.context in in_flight:
                in_flight[task.context] += len(task.items)
        return [Demand(c, len(self._backlogs[c]), in_flight[c]) for c in wanted]

    def _task_size(self) -> int:
        slots = max(1, len(self._workers)) * self.config.max_in_flight
        size = math.ceil(self.pending / (slots * self.config.tasks_per_slot))
        return max(self.config.min_task_items, min(self.config.max_task_items, size))

    def _start_task(
        self, worker: WorkerState, context: str, backlog: Backlog, now: float
    ) -> RunTask:
        items, group = backlog.take(self._task_size())
        self._task_seq += 1
        task = _Task(f"t{self._task_seq}", worker.name, context, items, now, group)
        self._tasks[task.id] = task
        worker.tasks.add(task.id)
        return RunTask(task.id, worker.name, context, _ids(items))


def _ids(items: tuple[ItemRef, ...] | list[ItemRef]) -> tuple[str, ...]:
    return tuple(item.id for item in items)
