"""The local churn harness: evicts and replaces workers of a LocalCluster while a job runs,
on a seeded schedule, the way an opportunistic pool would.

A hard eviction is SIGKILL of the worker process (its nanny starts a fresh one, as a new slot
appearing); a graceful one is SIGTERM (the worker drains and leaves with its nanny, and a new
worker is added `rejoin_seconds` later).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from distributed import Client, LocalCluster

from pervade.core.churn import ChurnRate, Eviction, EvictionKind, eviction_schedule

logger = logging.getLogger(__name__)


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
        horizon: float = 7 * 24 * 3600.0,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.rate = rate
        self.schedule: list[Eviction] = eviction_schedule(rate, workers, horizon)
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
        for eviction in self.schedule:
            if self._stop.wait(max(0.0, started + eviction.at - time.monotonic())):
                return
            try:
                self._evict(eviction, time.monotonic() - started)
            except Exception as exc:  # a worker that vanished meanwhile: skip this one
                logger.warning("pervade churn: eviction skipped: %s", exc)

    def _evict(self, eviction: Eviction, at: float) -> None:
        workers = sorted(self.client.scheduler_info()["workers"])
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
            # The drained worker leaves with its nanny; a new slot appears a little later.
            timer = threading.Timer(self.rate.rejoin_seconds, self._add_worker)
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _add_worker(self) -> None:
        if not self._stop.is_set():
            self.cluster.scale(len(self.cluster.worker_spec) + 1)
