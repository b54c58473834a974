"""Simulated workers: joining, running their tasks one at a time, being stopped, draining and
leaving.

A task takes the pool's task overhead plus its items' work at the worker's speed. It ends in
one of four ways: it finishes (every item reported); it is cancelled (the dispatcher lost
interest: a speculative copy's loser), which stops it alone while the worker goes on with
its queue; it is drained (a graceful eviction under pervade: at the end of the grace period
the items finished so far are reported and the rest handed back); or its worker leaves under
it (everything in it is lost and reruns).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque

import simpy

from pervade.core.churn import Eviction, EvictionKind
from pervade.core.decisions import RunTask
from pervade.core.events import (
    ContextStateChanged,
    TaskFailed,
    TaskFinished,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.states import ContextState
from pervade.sim.base import Proc, SimBase, Worker
from pervade.sim.policy import drains


class Workers(SimBase):
    _seq: int

    # -- joining and leaving ---------------------------------------------------------

    def _join(self, slot: int) -> None:
        self._seq += 1
        w = Worker(f"w{self._seq:06d}", slot, self.slots[slot], self._seq)
        self.workers[w.name] = w
        self.ledger.joined(w.name, self.env.now)
        w.work = self.env.process(self._work(w))
        self.feed(WorkerJoined(w.name, gpu_class=w.gpu.name))

    def _leave(self, w: Worker) -> None:
        """The worker is gone: whatever it was doing is lost (the dispatcher requeues)."""
        w.alive = False
        for proc in [*w.procs, w.work]:
            if proc is not None and proc.is_alive and proc is not self.env.active_process:
                proc.interrupt()
        lost = ([w.running] if w.running else []) + list(w.queue)
        w.running, w.queue = None, deque()
        del self.workers[w.name]
        self.free_slots.append(w.slot)
        self.free_slots.sort()
        self.ledger.left(w.name, self.env.now)
        for task in lost:
            self.feed(TaskFailed(task.task, "worker evicted", evicted=True))
        self.feed(WorkerLeft(w.name))

    def _victim(self, eviction: Eviction) -> Worker | None:
        """The live worker `eviction` takes (none evicted already): the newest, or its pick
        of them by name; None if there is none."""
        live = sorted((w for w in self.workers.values() if not w.evicting), key=lambda w: w.name)
        if not live:
            return None
        if eviction.pick is None:
            return max(live, key=lambda w: w.seq)
        return live[int(eviction.pick * len(live))]

    def _evict(self, eviction: Eviction) -> Proc:
        """Take one live worker per the eviction. Given notice, a pervade worker drains: it
        hands back what it has not started and lets its running task go on until the grace
        period ends, then reports the items finished and hands back the rest; it leaves as
        soon as it has nothing to do. A reference worker ignores the notice: it runs on,
        taking tasks, until it is killed."""
        w = self._victim(eviction)
        if w is None:
            return
        w.evicting = True
        self.evictions += 1
        grace = self.s.grace_seconds
        if eviction.kind is EvictionKind.HARD:
            self._leave(w)
            return
        if not drains(self.s):
            yield self.env.timeout(grace)
            if w.alive:
                self._leave(w)
            return
        w.draining = True
        handed_back, w.queue = list(w.queue), deque()  # what it had, not what comes now
        self.feed(WorkerDraining(w.name, grace))
        for queued in handed_back:
            self._hand_back(queued)
        # It leaves once it has nothing to do, or when the grace period ends, whichever is
        # first; at the end, the running task reports what it finished. Meanwhile the
        # dispatcher may give it short tasks sized to end within the grace period.
        deadline = self.env.now + grace
        while w.alive and (w.running is not None or w.queue):
            w.settled = self.env.event()
            yield w.settled | self.env.timeout(max(0.0, deadline - self.env.now))
            if self.env.now < deadline or not w.alive:
                continue
            if w.running is not None:
                self._drain_running(w, w.running)
            handed_back, w.queue = list(w.queue), deque()
            for queued in handed_back:
                self._hand_back(queued)
            break
        if w.alive:
            self._leave(w)

    # -- running tasks ---------------------------------------------------------------

    def _accept(self, items: tuple[str, ...]) -> int:
        """Record that `items` finished; the number accepted. An item already accepted (a
        copy that finished first, or in the same instant) is dropped, as the journal does."""
        kept = 0
        for item in items:
            index = int(item[1:])
            self.finished_count[index] += 1
            if self.done_count[index]:
                self.duplicates += 1
                continue
            self.done_count[index] = 1
            self.completed += 1
            kept += 1
        return kept

    def _work(self, w: Worker) -> Proc:
        overhead = self.s.pool.task_overhead_seconds
        while w.alive:
            if not w.queue:
                if w.settled is not None and not w.settled.triggered:
                    w.settled.succeed()  # a draining worker with nothing left to do
                w.wake = self.env.event()
                with contextlib.suppress(simpy.Interrupt):  # leaving, or a late stop
                    yield w.wake
                continue
            task = w.queue.popleft()
            if task.context not in w.live:
                self._hand_back(task)
                continue
            per_item = self.jobs[task.context].work_seconds / w.gpu.speed
            w.running, w.run_start = task, self.env.now
            w.run_end = w.run_start + overhead + len(task.items) * per_item
            w.live[task.context] = w.run_start
            remaining = w.run_end - w.run_start
            while True:
                try:
                    yield self.env.timeout(remaining)
                    break
                except simpy.Interrupt:
                    if w.running is not task:
                        break  # stopped: whoever stopped it reported it
                    remaining = max(0.0, w.run_end - self.env.now)
            if w.running is not task:
                continue
            w.running = None
            w.live[task.context] = self.env.now
            ran = len(task.items) * per_item
            kept = self._accept(task.items)
            self.ledger.reported(task.task, self.env.now, ran, kept, len(task.items), 0.0)
            if not self.s.reuse:
                del w.live[task.context]
                self.feed(ContextStateChanged(w.name, task.context, ContextState.ABSENT))
            self.feed(TaskFinished(task.task))

    def _interrupt_work(self, w: Worker) -> None:
        if w.work is not None and w.work.is_alive and w.work is not self.env.active_process:
            w.work.interrupt()

    def _cancel(self, task_id: str) -> None:
        """The dispatcher dropped `task_id`: take it out of any queue, and stop it where it
        runs (that worker goes on with its queue). Its time so far is waste."""
        for w in self.workers.values():
            if any(t.task == task_id for t in w.queue):
                w.queue = deque(t for t in w.queue if t.task != task_id)
                self.ledger.reported(task_id, self.env.now, 0.0, 0, 0, 0.0)
            if w.running is not None and w.running.task == task_id:
                w.running = None
                self.cancelled += 1
                self.ledger.lost(task_id, self.env.now)
                self._interrupt_work(w)

    def _drain_running(self, w: Worker, task: RunTask) -> None:
        """The grace period is over: report the items `task` finished, hand back the rest.
        The item under way when time ran out is lost; finished ones are never redone."""
        per_item = self.jobs[task.context].work_seconds / w.gpu.speed
        working = max(0.0, self.env.now - w.run_start - self.s.pool.task_overhead_seconds)
        done = min(len(task.items) - 1, math.floor(working / per_item + 1e-9))
        finished, unfinished = task.items[:done], task.items[done:]
        w.running = None
        kept = self._accept(finished)
        self.ledger.reported(
            task.task, self.env.now, done * per_item, kept, done, working - done * per_item
        )
        self._interrupt_work(w)
        self.feed(TaskFinished(task.task, unfinished=unfinished))

    def _hand_back(self, task: RunTask) -> None:
        """Return a task unstarted: no time of the worker's went into it."""
        self.ledger.reported(task.task, self.env.now, 0.0, 0, 0, 0.0)
        self.feed(TaskFinished(task.task, unfinished=task.items))
