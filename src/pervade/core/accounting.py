"""Goodput: where the workers' time went, from what the dispatcher side observes.

Every second a worker is in the pool is one of:
- useful: running the batch function on items whose outcomes were accepted;
- loading: building contexts (importing, reading weights, moving them to the device);
- lost: work that produced nothing kept: tasks that died with their worker or process,
  slices that raised, duplicates of outcomes accepted from elsewhere;
- idle: the rest: waiting for work or for a context, dispatch gaps, starting, draining.

A lost task is charged from the later of its start and its worker's last report (the worker
runs one task at a time, so that is when it began on the lost work) to the moment the loss
was seen. Pure: times are passed in, so the simulator keeps the same books.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Goodput:
    worker_seconds: float = 0.0
    useful: float = 0.0
    loading: float = 0.0
    lost: float = 0.0

    @property
    def idle(self) -> float:
        return max(0.0, self.worker_seconds - self.useful - self.loading - self.lost)

    @property
    def share(self) -> float:
        """Useful time over all worker time (0 before any worker joined)."""
        return self.useful / self.worker_seconds if self.worker_seconds > 0 else 0.0


@dataclass(slots=True)
class _Presence:
    joined: float
    accounted_until: float  # the end of the last work whose time was already booked
    tasks: dict[str, float] = field(default_factory=dict)  # in flight: task -> start


class Ledger:
    def __init__(self) -> None:
        self._present: dict[str, _Presence] = {}
        self._task_worker: dict[str, str] = {}
        self._booked: dict[str, tuple[float, int]] = {}  # task -> (seconds, outcomes) so far
        self._closed_seconds = 0.0  # presence of workers that have left
        self._useful = 0.0
        self._loading = 0.0
        self._lost = 0.0

    def joined(self, worker: str, now: float) -> None:
        self._present.setdefault(worker, _Presence(now, now))

    def left(self, worker: str, now: float) -> None:
        presence = self._present.pop(worker, None)
        if presence is None:
            return
        self._lose_in_flight(presence, now)
        for task in presence.tasks:
            self._task_worker.pop(task, None)
            self._booked.pop(task, None)
        self._closed_seconds += now - presence.joined

    def started(self, task: str, worker: str, now: float) -> None:
        presence = self._present.get(worker)
        if presence is not None:
            presence.tasks[task] = now
            self._task_worker[task] = worker

    def loaded(self, worker: str, seconds: float, now: float) -> None:
        """A context build of `seconds` finished on `worker` (ahead of tasks or inside one)."""
        self._loading += seconds
        presence = self._present.get(worker)
        if presence is not None:
            presence.accounted_until = max(presence.accounted_until, now)

    def progressed(self, task: str, now: float, ran_seconds: float, kept: int, ran: int) -> None:
        """A running task sent `ran` outcomes ahead of its report, `kept` of them accepted,
        from `ran_seconds` of work: booked now, so that its loss later costs only the rest."""
        self._book(ran_seconds, kept, ran)
        seconds, outcomes = self._booked.get(task, (0.0, 0))
        self._booked[task] = (seconds + ran_seconds, outcomes + ran)
        worker = self._task_worker.get(task)
        presence = self._present.get(worker) if worker else None
        if presence is not None:
            presence.accounted_until = max(presence.accounted_until, now)

    def reported(
        self, task: str, now: float, ran_seconds: float, kept: int, ran: int, failed_seconds: float
    ) -> None:
        """A task reported: it ran items for `ran_seconds`, of which `kept` of `ran` outcomes
        were accepted (the rest were duplicates), and spent `failed_seconds` on slices that
        raised. What it sent on the way (`progressed`) is in these totals and booked already."""
        seconds, outcomes = self._booked.pop(task, (0.0, 0))
        self._book(max(0.0, ran_seconds - seconds), kept, max(0, ran - outcomes))
        self._lost += failed_seconds
        presence = self._finish(task)
        if presence is not None:
            presence.accounted_until = max(presence.accounted_until, now)

    def _book(self, ran_seconds: float, kept: int, ran: int) -> None:
        share = kept / ran if ran else 0.0
        self._useful += ran_seconds * share
        self._lost += ran_seconds * (1.0 - share)

    def lost(self, task: str, now: float) -> None:
        """A task produced nothing (its worker died under it, or the whole task raised)."""
        worker = self._task_worker.get(task)
        presence = self._present.get(worker) if worker else None
        if presence is not None and task in presence.tasks:
            began = max(presence.tasks[task], presence.accounted_until)
            self._lost += max(0.0, now - began)
            presence.accounted_until = max(presence.accounted_until, now)
        self._booked.pop(task, None)
        self._finish(task)

    def _finish(self, task: str) -> _Presence | None:
        worker = self._task_worker.pop(task, None)
        presence = self._present.get(worker) if worker else None
        if presence is not None:
            presence.tasks.pop(task, None)
        return presence

    def _lose_in_flight(self, presence: _Presence, now: float) -> None:
        if presence.tasks:
            began = max(min(presence.tasks.values()), presence.accounted_until)
            self._lost += max(0.0, now - began)

    def snapshot(self, now: float) -> Goodput:
        present = sum(now - p.joined for p in self._present.values())
        return Goodput(self._closed_seconds + present, self._useful, self._loading, self._lost)


@dataclass(slots=True)
class DispatchStats:
    """What churn and the tail cost so far, as the dispatcher saw it."""

    hard_evictions: int = 0  # workers gone without notice (killed, frozen, node lost)
    graceful_evictions: int = 0  # workers that drained before leaving
    requeued_evicted: int = 0  # item attempts lost with a worker that left without notice
    requeued_graceful: int = 0  # items a draining worker handed back unstarted
    restarts: int = 0  # worker processes replaced because their device became unusable
    requeued_stopped: int = 0  # items handed back unstarted when a task's context broke
    copies: int = 0  # speculative copies of tail tasks started
    copies_won: int = 0  # copies that finished before their original
