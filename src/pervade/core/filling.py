"""The dispatcher's placement: after every event, tasks for free warm slots, builds for idle
workers, prefetches for busy ones, and speculative copies for the tail.

A mixin of `Dispatcher`, which owns the bookkeeping; kept apart so that each file holds one
side: the event handlers there, the choices made from their state here.
"""

from __future__ import annotations

import dataclasses
import math

from pervade.core.accounting import DispatchStats
from pervade.core.backlog import Backlog
from pervade.core.config import DispatchConfig
from pervade.core.decisions import Abort, Decision, LoadContext, RunTask, StageContext
from pervade.core.items import ItemRef
from pervade.core.load_costs import LoadCosts, Throughput
from pervade.core.placement import (
    STAGE_TIMEOUT,
    Demand,
    Task,
    WorkerState,
    choose_build,
    choose_stage,
    may_stage,
)
from pervade.core.roster import Roster
from pervade.core.sizing import Hazard, SizeInputs, adaptive_size, young_daly_seconds
from pervade.core.speculation import choose_copies, expected_ends
from pervade.core.states import ContextState

# Items of a task before any speed is measured, unless the user gave a batch size: small
# enough that a first task on a slow or doomed worker loses little, large enough to measure.
START_ITEMS = 32
# The largest task of the fixed (non-adaptive) rule without a user batch size.
FIXED_RULE_MAX = 64
# Warm workers up to which their speeds are summed one by one (see `_warm_rate`).
EXACT_WARM_RATE = 64
# Share of a draining worker's remaining grace a task given to it may be expected to take.
GRACE_SAFETY = 0.7


class Placement:
    config: DispatchConfig
    _roster: Roster
    _tasks: dict[str, Task]
    _twins: dict[str, str]
    _backlogs: dict[str, Backlog]
    _in_flight: dict[str, int]
    _task_seq: int
    _wanted: tuple[str, ...]
    _check_abort: bool
    _stagers: set[str]  # workers with a stage outstanding
    _draining: set[str]
    costs: LoadCosts
    rates: Throughput
    hazard: Hazard
    prefetches: int
    stats: DispatchStats

    @property
    def pending(self) -> int:
        raise NotImplementedError

    # -- placement -------------------------------------------------------------------

    def _fill(self, now: float) -> list[Decision]:
        wanted = tuple(c for c, b in self._backlogs.items() if len(b))
        wanted_changed, self._wanted = wanted != self._wanted, wanted
        decisions: list[Decision] = []
        for context in wanted:
            decisions += self._assign(context, now)
        if self._draining:
            decisions += self._use_grace(now)
        demands: list[Demand] | None = None
        if wanted and self._roster.idle:
            demands = self._demands(wanted)
            decisions += self._builds(demands, now)
        if wanted and self._check_abort:
            self._check_abort = False
            decisions += self._aborts(wanted)
        if self.config.prefetch and wanted:
            # A worker becomes a candidate for a stage when it changed, when the set of
            # contexts with work changed, or when its stage timed out; the others were
            # looked at already.
            touched = list(self._roster) if wanted_changed else self._roster.take_touched()
            overdue = self._stages_overdue(now)
            touched += [w for w in overdue if w.name not in {t.name for t in touched}]
            limit = self.config.max_load_failures
            # A cheap first look, before the demands are worked out.
            touched = [w for w in touched if any(may_stage(w, c, limit) for c in wanted)]
            if touched:
                demands = demands or self._demands(wanted)
                decisions += self._stages(touched, demands, now)
        self._roster.touched.clear()
        if self.config.speculate:
            decisions += self._speculate(now)
        return decisions

    def _assign(self, context: str, now: float) -> list[Decision]:
        """Tasks for the context's free warm slots, earliest expected completion first:
        the fewest tasks queued, then the fastest, then the least likely to be evicted. One
        task per worker per round, so work spreads over idle warm workers first."""
        backlog, free = self._backlogs[context], self._roster.free_on(context)
        decisions: list[Decision] = []
        while len(backlog) and free:
            for worker in sorted(
                (w for n in free if (w := self._roster.get(n)) is not None),
                key=lambda w: self._completion_key(w, context, now),
            ):
                if not len(backlog):
                    break
                decisions.append(self._start_task(worker, context, backlog, now))
        return decisions

    def _use_grace(self, now: float) -> list[Decision]:
        """A draining worker that said how long it has left gets one task at a time that its
        measured speed finishes well within that time: notice is working time, not idle."""
        decisions: list[Decision] = []
        for name in sorted(self._draining):
            worker = self._roster.get(name)
            if worker is None or worker.deadline is None or worker.restarting:
                self._draining.discard(name)
                continue
            if worker.tasks:
                continue
            left = worker.deadline - now - self.config.task_overhead
            for context, state in sorted(worker.contexts.items()):
                backlog = self._backlogs.get(context)
                rate = self.rates.estimate(name, context)
                if not state.is_live or not backlog or not rate:
                    continue
                fits = math.floor(rate * left * GRACE_SAFETY)
                if fits >= 1:
                    decisions.append(self._start_task(worker, context, backlog, now, fits))
                    break
        return decisions

    def _completion_key(
        self, worker: WorkerState, context: str, now: float
    ) -> tuple[int, float, float, str]:
        """Items/s the worker is expected to deliver: its speed, less the share of a task's
        work its class loses to evictions."""
        rate = self.rates.estimate(worker.name, context) or 0.0
        between = self.hazard.mean_seconds(worker.gpu_class, now)
        at_risk = min(0.9, young_daly_seconds(self.config.task_overhead, between) / between)
        return (len(worker.tasks), -rate * (1 - at_risk), worker.joined, worker.name)

    def _builds(self, demands: list[Demand], now: float) -> list[Decision]:
        decisions: list[Decision] = []
        for name in sorted(self._roster.idle):
            worker = self._roster.get(name)
            if worker is None:
                continue
            between = self.hazard.mean_seconds(worker.gpu_class, now)
            build = choose_build(
                worker, demands, self.costs, self.config.max_load_failures, between
            )
            if build is None:
                continue
            if worker.staging == build:
                worker.staging = None  # the build takes over the copy the stage began
            worker.contexts[build] = ContextState.LOADING
            self._roster.touch(worker)
            decisions.append(LoadContext(worker.name, build))
            demands = [
                dataclasses.replace(d, serving=d.serving + 1) if d.context == build else d
                for d in demands
            ]
        return decisions

    def _aborts(self, wanted: tuple[str, ...]) -> list[Decision]:
        limit = self.config.max_load_failures
        return [
            Abort(
                f"context {context[:12]} failed to build on every worker "
                f"({len(self._roster)}), {limit} times each"
            )
            for context in wanted
            if len(self._roster)
            and all(w.load_failures.get(context, 0) >= limit for w in self._roster)
        ]

    def _stages(
        self, workers: list[WorkerState], demands: list[Demand], now: float
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for worker in workers:
            staged = choose_stage(worker, demands, self.config.max_load_failures)
            if staged is not None:
                worker.staging, worker.staging_since = staged, now
                self._stagers.add(worker.name)
                self.prefetches += 1
                decisions.append(StageContext(worker.name, staged))
        return decisions

    def _stages_overdue(self, now: float) -> list[WorkerState]:
        """Workers whose stage never reported within STAGE_TIMEOUT: taken as failed (never
        asked to stage that context again) and free to stage another."""
        overdue = []
        for name in sorted(self._stagers):
            worker = self._roster.get(name)
            if worker is None or worker.staging is None:
                self._stagers.discard(name)
            elif now - worker.staging_since > STAGE_TIMEOUT:
                worker.stage_failures.add(worker.staging)
                worker.staging = None
                self._stagers.discard(name)
                overdue.append(worker)
        return overdue

    def _demands(self, wanted: tuple[str, ...]) -> list[Demand]:
        demands = []
        for c in wanted:
            live = self._roster.live_on(c)
            demands.append(
                Demand(
                    c,
                    len(self._backlogs[c]),
                    self._in_flight.get(c, 0),
                    self._warm_rate(live, c),
                    len(live) + len(self._roster.building(c)),
                    frozenset(self._roster.holders(c)),
                )
            )
        return demands

    def _warm_rate(self, live: set[str], context: str) -> float | None:
        """Items/s of the context's warm workers together: summed worker by worker for a
        small pool; for a large one, the typical worker's speed times their number (the
        sum would be a scan of every warm worker after every event)."""
        if not live:
            return None
        if len(live) <= EXACT_WARM_RATE:
            return self.rates.combined(live, context)
        mean = self.rates.mean(context)
        return None if mean is None else mean * len(live)

    def _speculate(self, now: float) -> list[Decision]:
        """Copies of tail tasks for idle warm workers of contexts whose backlog is empty."""
        decisions: list[Decision] = []
        for context, in_flight in self._in_flight.items():
            if not in_flight or len(self._backlogs.get(context, ())):
                continue
            idle = sorted(n for n in self._roster.free_on(context) if n in self._roster.idle)
            if not idle:
                continue
            tasks = [t for t in self._tasks.values() if t.context == context]
            ends = expected_ends(tasks, self.rates, now)
            # Not a draining worker's task: it stops at its next slice and hands the rest back.
            outstanding = [
                t
                for t in tasks
                if not t.group and t.id not in self._twins and not self._is_draining(t.worker)
            ]
            overhead = self.config.task_overhead
            for name, task in choose_copies(idle, outstanding, ends, self.rates, now, overhead):
                worker = self._roster.get(name)
                if worker is not None:
                    decisions.append(self._start_copy(worker, task, now))
        return decisions

    def _is_draining(self, name: str) -> bool:
        worker = self._roster.get(name)
        return worker is not None and worker.draining

    # -- starting tasks --------------------------------------------------------------

    def _task_size(self, worker: WorkerState, context: str, pending: int, now: float) -> int:
        config = self.config
        low, high = config.min_task_items, config.max_task_items
        if not config.adaptive:
            if config.task_items is not None:
                return config.task_items
            # The fixed rule: the backlog split evenly over all slots, a few tasks each.
            slots = max(1, len(self._roster)) * config.max_in_flight
            share = math.ceil(self.pending / (slots * config.tasks_per_slot))
            return self._whole_batches(max(low, min(high, FIXED_RULE_MAX, share)), pending)
        # The workers the backlog will be shared with: warm ones and those building the
        # context (at the start of a run most are still building; counting only the first
        # warm one would hand it most of the job).
        serving = len(self._roster.live_on(context)) + len(self._roster.building(context))
        serving = max(1, serving)
        rate = self.rates.estimate(worker.name, context)
        mean = self.rates.mean(context)
        share_of_speed = min(1.0, rate / (mean * serving)) if rate and mean else 1.0 / serving
        inputs = SizeInputs(
            pending,
            rate,
            share_of_speed,
            config.max_in_flight,
            self.hazard.mean_seconds(worker.gpu_class, now),
        )
        start = config.task_items or START_ITEMS
        size = adaptive_size(
            inputs, config.task_overhead, config.tasks_per_slot, start, (low, high)
        )
        return self._whole_batches(size, pending)

    def _whole_batches(self, size: int, pending: int) -> int:
        """`size` rounded up to whole device batches (`task_quantum`), within the backlog
        and max_task_items."""
        quantum = self.config.task_quantum
        if quantum <= 1 or size % quantum == 0:
            return size
        rounded = -(-size // quantum) * quantum
        return max(size, min(rounded, pending, self.config.max_task_items))

    def _track(self, task: Task, worker: WorkerState) -> RunTask:
        self._tasks[task.id] = task
        self._in_flight[task.context] = self._in_flight.get(task.context, 0) + len(task.items)
        worker.tasks.add(task.id)
        self._roster.touch(worker)
        return RunTask(task.id, worker.name, task.context, _ids(task.items))

    def _start_task(
        self,
        worker: WorkerState,
        context: str,
        backlog: Backlog,
        now: float,
        at_most: int | None = None,
    ) -> RunTask:
        size = self._task_size(worker, context, len(backlog), now)
        if at_most is not None:
            size = min(size, at_most)
        items, group = backlog.take(size)
        self._task_seq += 1
        task = Task(f"t{self._task_seq}", worker.name, context, items, now, group)
        return self._track(task, worker)

    def _start_copy(self, worker: WorkerState, original: Task, now: float) -> RunTask:
        self._task_seq += 1
        copy = Task(f"t{self._task_seq}", worker.name, original.context, original.items, now,
                    False, copy_of=original.id)  # fmt: skip
        self._twins[copy.id], self._twins[original.id] = original.id, copy.id
        self.stats.copies += 1
        return self._track(copy, worker)


def _ids(items: tuple[ItemRef, ...]) -> tuple[str, ...]:
    return tuple(item.id for item in items)
