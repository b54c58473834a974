"""The dispatcher: which worker runs which items under which context, and when to build one.

`Dispatcher.handle(event, now)` is the only entry point; it mutates the dispatcher's own
bookkeeping and returns decisions for the caller to carry out.
"""

from __future__ import annotations

from pervade.core.accounting import DispatchStats
from pervade.core.backlog import Backlog
from pervade.core.config import DispatchConfig
from pervade.core.decisions import (
    CancelTask,
    Decision,
    FailItems,
    RequeueItems,
    RestartWorker,
    ScaleAdvice,
)
from pervade.core.events import (
    ContextStateChanged,
    Event,
    ItemsSubmitted,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    WorkerClassified,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.filling import Placement
from pervade.core.items import ItemRef
from pervade.core.load_costs import LoadCosts, Throughput
from pervade.core.placement import (
    STAGED_DEFAULT,
    Task,
    WorkerState,
)
from pervade.core.roster import Roster
from pervade.core.scaling import ScalingAdvisor, ScalingConfig
from pervade.core.sizing import Hazard
from pervade.core.states import ContextState

# Seconds between two looks at the scaling advice: it changes on the scale of minutes.
ADVICE_SECONDS = 30.0


class Dispatcher(Placement):
    def __init__(
        self, config: DispatchConfig | None = None, scaling: ScalingConfig | None = None
    ) -> None:
        self.config = config or DispatchConfig()
        self.advisor = ScalingAdvisor(scaling)
        self._next_advice = 0.0
        self._roster = Roster(self.config.max_in_flight)
        self._tasks: dict[str, Task] = {}
        self._twins: dict[str, str] = {}  # a task and its speculative copy, both ways
        # Items of running tasks whose outcomes arrived before their task ended.
        self._done_early: dict[str, set[str]] = {}
        self._backlogs: dict[str, Backlog] = {}
        self._in_flight: dict[str, int] = {}  # items in tasks, per context
        self._failures: dict[str, int] = {}
        self._task_seq = 0
        self._wanted: tuple[str, ...] = ()  # contexts with a backlog at the last fill
        self._check_abort = False
        self._stagers: set[str] = set()
        self._draining: set[str] = set()  # draining workers with time left to use
        self.stats = DispatchStats()
        self.load_seconds: dict[str, list[float]] = {}
        self.costs = LoadCosts()  # load seconds by tier, from finished builds
        self.rates = Throughput()  # items/s of warm workers and classes, from finished tasks
        self.hazard = Hazard()  # hard losses per GPU class
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
        return self._roster.names()

    def live_contexts(self) -> int:
        """Contexts live across all workers (one worker with one model counts one)."""
        return sum(1 for w in self._roster for state in w.contexts.values() if state.is_live)

    def departure(self, worker: str) -> str:
        """How `worker` is leaving, should it leave now: restarted, drained or evicted."""
        found = self._roster.get(worker)
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
            case WorkerJoined(worker=worker, live_contexts=live, gpu_class=gpu_class):
                if worker not in self._roster:
                    state = WorkerState(worker, now, gpu_class)
                    state.contexts = dict.fromkeys(live, ContextState.WARM)
                    self._roster.add(state)
                    self.rates.joined(worker, gpu_class)
                    self.hazard.joined(gpu_class, now)
                    self.advisor.joined(worker, now)
                    if live:
                        self.advisor.ready(worker, now)
            case WorkerClassified(worker=worker, gpu_class=gpu_class):
                found = self._roster.get(worker)
                if found is not None and found.gpu_class != gpu_class:
                    self.hazard.moved(found.gpu_class, gpu_class, found.joined)
                    self.rates.joined(worker, gpu_class)
                    found.gpu_class = gpu_class
            case WorkerLeft(worker=worker):
                decisions += self._worker_left(worker, now)
            case WorkerDraining(worker=worker, grace_seconds=grace):
                found = self._roster.get(worker)
                if found is not None:
                    found.draining = True
                    if grace is not None:
                        found.deadline = now + grace
                        self._draining.add(worker)
                    self._roster.touch(found)
            case ContextStateChanged():
                self._context_changed(event)
                if event.state.is_live:
                    self.advisor.ready(event.worker, now)
            case TaskFinished():
                decisions += self._task_finished(event, now)
            case TaskProgressed():
                self._task_progressed(event)
            case TaskFailed():
                decisions += self._task_failed(event)
        decisions += self._fill(now)
        if now >= self._next_advice:
            self._next_advice = now + ADVICE_SECONDS
            advice = self._advice(now)
            if advice is not None:
                decisions.append(advice)
        return decisions

    def _advice(self, now: float) -> ScaleAdvice | None:
        """Workers the remaining work would use well, from its GPU-seconds at the measured
        speeds; none until some speed is measured."""
        items = gpu_seconds = 0.0
        for context, backlog in self._backlogs.items():
            remaining = len(backlog) + self._in_flight.get(context, 0)
            rate = self.rates.mean(context)
            if remaining and rate is None:
                return None
            items += remaining
            gpu_seconds += remaining / rate if rate else 0.0
        return self.advisor.advise(
            now, gpu_seconds, len(self._roster), idle=len(self._roster.idle), items=int(items)
        )

    # -- event handlers --------------------------------------------------------------

    def _worker_left(self, name: str, now: float) -> list[Decision]:
        kind = self.departure(name)
        worker = self._roster.remove(name)
        if worker is None:
            return []
        self.rates.forget(name)
        self.hazard.left(worker.gpu_class, worker.joined, now, lost=kind == "evicted")
        self.advisor.left(name, now, evicted=kind != "restarted")
        self._check_abort = True
        decisions: list[Decision] = []
        if kind == "drained":
            self.stats.graceful_evictions += 1
        elif kind == "evicted":  # a restart was counted when it was asked for
            self.stats.hard_evictions += 1
        for task_id in sorted(worker.tasks):
            done = self._done_early.get(task_id, set())
            task = self._forget(task_id)
            if task is None:
                continue
            reason = "restarted" if kind == "restarted" else "evicted"
            rest = tuple(item for item in task.items if item.id not in done)
            decisions.append(RequeueItems(task_id, _ids(rest), reason))
            decisions.append(CancelTask(task_id))
            if self._untwin(task_id):
                continue  # its copy (or original) runs on and covers the items
            self._requeue(task.context, rest, task.group)
            # A draining worker leaves only unstarted tasks behind: it waits for the running
            # one (within its grace period).
            if kind == "drained":
                self.stats.requeued_graceful += len(rest)
            else:
                self.stats.requeued_evicted += len(rest)
        return decisions

    def _context_changed(self, event: ContextStateChanged) -> None:
        worker = self._roster.get(event.worker)
        if worker is None:
            return
        self._context_state(worker, event)
        self._roster.touch(worker)

    def _context_state(self, worker: WorkerState, event: ContextStateChanged) -> None:
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
            self._check_abort = True
        if event.load_seconds is not None and state.is_live:
            self.load_seconds.setdefault(context, []).append(event.load_seconds)
            self.costs.record(context, event.tier, event.load_seconds)

    def _task_finished(self, event: TaskFinished, now: float) -> list[Decision]:
        task = self._forget(event.task)
        if task is None:
            return []  # a late duplicate of a task already given up on (or a copy's loser)
        ran = len(task.items) - len(event.unfinished) - len(event.failed)
        self.rates.finished(task.worker, task.context, ran, task.started, now)
        decisions: list[Decision] = []
        worker = self._roster.get(task.worker)
        if event.restart and worker is not None and not worker.restarting:
            worker.restarting = True
            self._roster.touch(worker)
            self.stats.restarts += 1
            decisions.append(RestartWorker(worker.name, event.error))
        handed_back, failed = set(event.unfinished), set(event.failed)
        twin = self._untwin(task.id)
        if twin is not None and not handed_back and not failed:
            # The first copy to finish wins; the other's result would only be dropped.
            self._forget(twin)
            decisions.append(CancelTask(twin))
            if task.copy_of is not None:
                self.stats.copies_won += 1
        for item in task.items:
            if item.id not in handed_back and item.id not in failed:
                self._failures.pop(item.id, None)
        draining = worker is not None and worker.draining
        if handed_back:
            back = tuple(item for item in task.items if item.id in handed_back)
            reason = "drained" if draining else "stopped"
            decisions.append(RequeueItems(task.id, _ids(back), reason))
            if twin is None:
                self._requeue(task.context, back, task.group)
                if draining:
                    self.stats.requeued_graceful += len(back)
                else:
                    self.stats.requeued_stopped += len(back)
        if failed:
            faulty = tuple(item for item in task.items if item.id in failed)
            if twin is None:
                decisions += self._isolate(task, faulty, event.error)
            else:  # the copy runs the same items: it decides, charged if it fails too
                decisions.append(RequeueItems(task.id, _ids(faulty), "a copy runs on"))
        return decisions

    def _task_progressed(self, event: TaskProgressed) -> None:
        task = self._tasks.get(event.task)
        if task is None:
            return  # it ended already: its report covered these items
        done = self._done_early.setdefault(task.id, set())
        new = {item.id for item in task.items if item.id not in done} & set(event.done)
        done |= new
        self._in_flight[task.context] -= len(new)
        for item_id in new:
            self._failures.pop(item_id, None)

    def _task_failed(self, event: TaskFailed) -> list[Decision]:
        done = self._done_early.get(event.task, set())
        task = self._forget(event.task)
        if task is None:
            return []
        rest = tuple(item for item in task.items if item.id not in done)
        twin = self._untwin(task.id)
        if not rest:
            return []  # every outcome arrived on the way: nothing was lost
        reason = "evicted" if event.evicted else f"task raised: {event.error}"
        if twin is not None:
            return [RequeueItems(task.id, _ids(rest), reason)]
        if event.evicted:
            self._requeue(task.context, rest, task.group)
            self.stats.requeued_evicted += len(rest)
            return [RequeueItems(task.id, _ids(rest), reason)]
        return self._isolate(task, rest, event.error)

    def _isolate(self, task: Task, items: tuple[ItemRef, ...], error: str) -> list[Decision]:
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

    def _forget(self, task_id: str) -> Task | None:
        """Stop tracking a task: off its worker's slots and the in-flight counts."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return None
        done = self._done_early.pop(task_id, set())
        self._in_flight[task.context] -= len(task.items) - len(done)
        worker = self._roster.get(task.worker)
        if worker is not None:
            worker.tasks.discard(task_id)
            self._roster.touch(worker)
        return task

    def _untwin(self, task_id: str) -> str | None:
        """The task's speculative twin, if it is still running; the pair is unlinked."""
        twin = self._twins.pop(task_id, None)
        if twin is not None:
            self._twins.pop(twin, None)
        return twin if twin in self._tasks else None


def _ids(items: tuple[ItemRef, ...] | list[ItemRef]) -> tuple[str, ...]:
    return tuple(item.id for item in items)
