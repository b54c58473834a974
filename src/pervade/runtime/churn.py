"""The local churn harness: evicts and adds workers of a LocalCluster while a job runs, on a
seeded schedule, the way an opportunistic pool would.

Two kinds of schedule (`pervade.core.churn`, `pervade.core.availability`):

- a rate: a hard eviction is SIGKILL of the worker process (its nanny starts a fresh one, as a
  new slot appearing); a graceful one is SIGTERM (the worker drains and leaves with its
  nanny, and a new worker is added `rejoin_seconds` later). The pool keeps its size.
- a trace: the pool follows the trace scaled to `workers`. An eviction shrinks it (SIGKILL
  with the nanny told not to restart, or SIGTERM and a drain), a join grows it with a new
  worker; the pool may be empty for a while, and the driver then waits for workers.

Either way a new worker never starts while a drained one is still leaving: on one node the
two would share a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster
from distributed.core import Status

from pervade.core.availability import Churn, Join, TraceSchedule, trace_schedule
from pervade.core.churn import ChurnRate, Eviction, EvictionKind, eviction_schedule
from pervade.runtime.membership import worker_addresses

logger = logging.getLogger(__name__)
_GONE = (Status.closing, Status.closed, Status.closing_gracefully, Status.failed)
_TICK = 0.25  # seconds between looks at the schedule and the pool


@dataclass(frozen=True, slots=True)
class ChurnRecord:
    at: float
    kind: EvictionKind
    worker: str


@dataclass(frozen=True, slots=True)
class JoinRecord:
    at: float
    name: str  # the new worker's name in the cluster's spec


class ChurnHarness:
    def __init__(
        self,
        cluster: LocalCluster,
        client: Client,
        churn: Churn,
        workers: int,
        grace_seconds: float = 60.0,
        horizon: float = 7 * 24 * 3600.0,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.churn = churn
        self.workers = workers
        self.grace_seconds = grace_seconds
        self._signalled: set[str] = set()  # workers told to leave: no longer part of the pool
        self._gaps: list[float] = []  # when graceful evictions left the pool short (rate)
        self._owed: list[Eviction] = []  # trace evictions due but not done yet
        self._added = 0
        self.trace: TraceSchedule | None = None
        self.schedule: list[Eviction]
        if isinstance(churn, ChurnRate):
            self.schedule = eviction_schedule(churn, workers, horizon, random.Random(churn.seed))
            self._pending: list[Eviction | Join] = list(self.schedule)
            self._target = workers
            self._rejoin = churn.rejoin_seconds
        else:
            self.trace = trace_schedule(churn, workers, random.Random(churn.spec.seed))
            self.schedule = [a for a in self.trace.actions if isinstance(a, Eviction)]
            self._pending = list(self.trace.actions)
            self._target = self.trace.initial
            self._rejoin = 0.0
        self.log: list[ChurnRecord] = []
        self.joins: list[JoinRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pervade-churn", daemon=True)
        self._timers: list[threading.Timer] = []

    def __enter__(self) -> ChurnHarness:
        if self.trace is not None and self._target < len(self._pool()):
            self._start_small()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        self._thread.join(timeout=10)

    def _start_small(self, timeout: float = 30.0) -> None:
        """The trace starts below the cluster's size: retire the extra workers before the
        job starts (they are not evictions, the pool just starts smaller)."""
        self.cluster.scale(self._target)
        deadline = time.monotonic() + timeout
        while len(self._pool()) > self._target and time.monotonic() < deadline:
            time.sleep(0.1)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(_TICK):
            now = time.monotonic() - started
            while self._pending and self._pending[0].at <= now:
                action = self._pending.pop(0)
                if isinstance(action, Join):
                    self._target += 1
                elif self.trace is not None:
                    self._target -= 1
                    self._owed.append(action)
                else:
                    try:
                        self._evict(action, now)
                    except Exception as exc:  # a worker that vanished meanwhile: skip this one
                        logger.warning("pervade churn: eviction skipped: %r", exc)
            if self.trace is not None:
                self._pay_owed(now)
            self._refill(now)

    def _evict(self, eviction: Eviction, at: float) -> None:
        workers = sorted(worker_addresses(self.client) - self._signalled)
        if not workers:
            return
        victim = workers[int((eviction.pick or 0.0) * len(workers))]
        # Ask with a deadline: a worker that is dying already may never answer.
        loop = self.client.loop.asyncio_loop  # type: ignore[union-attr]
        asking = self.client.run(os.getpid, workers=[victim], asynchronous=True)
        pid = asyncio.run_coroutine_threadsafe(asking, loop).result(timeout=5)[victim]
        self._signal(victim, pid, eviction.kind, at)

    def _signal(self, victim: str, pid: int, kind: EvictionKind, at: float) -> None:
        hard = kind is EvictionKind.HARD
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        self.log.append(ChurnRecord(at, kind, victim))
        if not hard:
            # As a batch system does: the kill follows the notice once the grace period is
            # over. The drained worker leaves with its nanny; a new slot appears a little later.
            self._signalled.add(victim)
            if self.trace is None:
                self._gaps.append(at)
            self._later(self.grace_seconds, lambda: _kill_quietly(pid, self._nanny_of(victim)))

    def _pay_owed(self, now: float) -> None:
        """Trace evictions that are due: each takes a live worker (the newest, or a seeded
        pick). One that finds only workers still starting waits for them to come up; one that
        finds the pool at its target already (a worker left on its own) is dropped."""
        live = self._pool()
        excess = len(live) + self._starting() - self._target
        del self._owed[max(0, excess) :]
        while self._owed and live:
            eviction = self._owed[0]
            if eviction.pick is None:
                address, nanny = live[-1]
            else:
                address, nanny = sorted(live, key=lambda w: w[0])[int(eviction.pick * len(live))]
            pid = nanny.pid
            if pid is None:
                return  # between processes: try again at the next tick
            if eviction.kind is EvictionKind.HARD:
                nanny.close_gracefully(reason="pervade churn: slot gone")  # no restart
            self._signal(address, pid, eviction.kind, now)
            self._owed.pop(0)
            live.remove((address, nanny))

    def _pool(self) -> list[tuple[str, Any]]:
        """(address, nanny) of the workers in the pool, oldest first."""
        return [
            (nanny.worker_address, nanny)
            for nanny in self.cluster.workers.values()
            if nanny.status not in _GONE and nanny.worker_address not in self._signalled
        ]

    def _leaving(self) -> int:
        """Workers told to leave (SIGTERM) whose process still runs its drain."""
        return sum(
            1
            for nanny in self.cluster.workers.values()
            if nanny.worker_address in self._signalled and nanny.status not in _GONE
        )

    def _starting(self) -> int:
        return len(set(self.cluster.worker_spec) - set(self.cluster.workers))

    def _nanny_of(self, address: str) -> Any:
        for nanny in list(self.cluster.workers.values()):
            if nanny.worker_address == address:
                return nanny
        return None

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _refill(self, now: float) -> None:
        """Keep the pool at its target: with a rate, its size less the gaps graceful
        evictions left for `rejoin_seconds`; with a trace, the trace's count now. A nanny that
        died or failed to start its worker (it can be hit by a kill while starting) is
        replaced at once. A hard-killed worker's nanny starts a new worker by itself (rate)."""
        if self.trace is None:
            self._gaps = [gap for gap in self._gaps if gap + self._rejoin > now]
        for name, nanny in list(self.cluster.workers.items()):
            if nanny.status in _GONE:
                # Forget it, or the cluster would start it again under its old name.
                self.cluster.worker_spec.pop(name, None)
        missing = self._target - len(self._pool()) - self._starting() - len(self._gaps)
        # A drained worker holds its slot (its GPU, its cores) until its process is gone, as
        # on a real node: a newcomer started beside it would share its GPU for the rest of
        # the run. The wait is the drain, at most the grace period.
        missing -= self._leaving()
        for _ in range(missing):
            # Fresh names: the cluster may still hold a closed nanny under an old one.
            self._added += 1
            name = f"churn-{self._added}"
            self.cluster.worker_spec[name] = self.cluster.new_spec
            self.joins.append(JoinRecord(now, name))
        if missing > 0:
            self.cluster.scale(len(self.cluster.worker_spec))  # starts what the spec lacks


def _kill_quietly(pid: int, nanny: Any) -> None:
    if nanny is not None and nanny.status not in _GONE:
        nanny.close_gracefully(reason="pervade churn: grace period over")  # no restart
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
