"""The local churn harness: evicts and replaces workers of a LocalCluster while a job runs,
on a seeded schedule, the way an opportunistic pool would.

A hard eviction is SIGKILL of the worker process (its nanny starts a fresh one, as a new slot
appearing); a graceful one is SIGTERM (the worker drains and leaves with its nanny, and a new
worker is added `rejoin_seconds` later).
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

from distributed import Client, LocalCluster
from distributed.core import Status

from pervade.core.churn import ChurnRate, Eviction, EvictionKind, eviction_schedule

logger = logging.getLogger(__name__)
_GONE = (Status.closing, Status.closed, Status.closing_gracefully, Status.failed)


@dataclass(frozen=True, slots=True)
class ChurnRecord:
    at: float
    kind: EvictionKind
    worker: str


class ChurnHarness:
    def __init__(
        self,
        cluster: LocalCluster,
        client: Client,
        rate: ChurnRate,
        workers: int,
        grace_seconds: float = 60.0,
        horizon: float = 7 * 24 * 3600.0,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.rate = rate
        self.workers = workers
        self.grace_seconds = grace_seconds
        self._signalled: set[str] = set()  # workers told to leave: no longer part of the pool
        self._gaps: list[float] = []  # when graceful evictions left the pool short
        self._added = 0
        self.schedule: list[Eviction] = eviction_schedule(
            rate, workers, horizon, random.Random(rate.seed)
        )
        self.log: list[ChurnRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pervade-churn", daemon=True)
        self._timers: list[threading.Timer] = []

    def __enter__(self) -> ChurnHarness:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        started = time.monotonic()
        pending = list(self.schedule)
        while not self._stop.wait(0.25):
            now = time.monotonic() - started
            while pending and pending[0].at <= now:
                try:
                    self._evict(pending.pop(0), now)
                except Exception as exc:  # a worker that vanished meanwhile: skip this one
                    logger.warning("pervade churn: eviction skipped: %r", exc)
            self._refill(now)

    def _evict(self, eviction: Eviction, at: float) -> None:
        workers = sorted(set(self.client.scheduler_info()["workers"]) - self._signalled)
        if not workers:
            return
        victim = workers[int(eviction.pick * len(workers))]
        # Ask with a deadline: a worker that is dying already may never answer.
        loop = self.client.loop.asyncio_loop  # type: ignore[union-attr]
        asking = self.client.run(os.getpid, workers=[victim], asynchronous=True)
        pid = asyncio.run_coroutine_threadsafe(asking, loop).result(timeout=5)[victim]
        hard = eviction.kind is EvictionKind.HARD
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        self.log.append(ChurnRecord(at, eviction.kind, victim))
        if not hard:
            # As a batch system does: the kill follows the notice once the grace period is
            # over. The drained worker leaves with its nanny; a new slot appears a little later.
            self._signalled.add(victim)
            self._gaps.append(at)
            self._later(self.grace_seconds, lambda: _kill_quietly(pid))

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _refill(self, now: float) -> None:
        """Keep the pool at its size: a graceful eviction leaves a gap that a new worker fills
        `rejoin_seconds` later; a nanny that died or failed to start its worker (it can be hit
        by a kill while starting) is replaced at once. A hard-killed worker's nanny starts a new
        worker by itself."""
        self._gaps = [gap for gap in self._gaps if gap + self.rate.rejoin_seconds > now]
        for name, nanny in list(self.cluster.workers.items()):
            if nanny.status in _GONE:
                # Forget it, or the cluster would start it again under its old name.
                self.cluster.worker_spec.pop(name, None)
        pool = [
            nanny
            for nanny in self.cluster.workers.values()
            if nanny.status not in _GONE and nanny.worker_address not in self._signalled
        ]
        starting = len(set(self.cluster.worker_spec) - set(self.cluster.workers))
        missing = self.workers - len(pool) - starting - len(self._gaps)
        for _ in range(missing):
            # Fresh names: the cluster may still hold a closed nanny under an old one.
            self._added += 1
            self.cluster.worker_spec[f"churn-{self._added}"] = self.cluster.new_spec
        if missing > 0:
            self.cluster.scale(len(self.cluster.worker_spec))  # starts what the spec lacks


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
