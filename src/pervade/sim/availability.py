"""How the simulated pool grows and shrinks: evictions at a rate (each slot refilled after a
while) or a real trace's joins and evictions, played in simulated time."""

from __future__ import annotations

from collections.abc import Generator
from random import Random
from typing import Any

import simpy

from pervade.core.availability import Join
from pervade.core.churn import ChurnRate, Eviction, EvictionKind

Proc = Generator[simpy.Event, Any, None]


class Availability:
    """The availability processes of `Simulation`, which provides the state and `_join`,
    `_evict` (kept apart so that the engine file holds the dispatcher's side alone)."""

    env: simpy.Environment
    rng: Random
    slots: tuple[Any, ...]
    free_slots: list[int]
    done: simpy.Event
    availability_over: bool

    def _join(self, slot: int) -> None:
        raise NotImplementedError

    def _evict(self, eviction: Eviction) -> Proc:
        raise NotImplementedError

    # -- availability ----------------------------------------------------------------

    def _take_slot(self) -> int | None:
        return self.free_slots.pop(0) if self.free_slots else None

    def _join_free(self) -> None:
        slot = self._take_slot()
        if slot is not None:
            self._join(slot)

    def _rate_churn(self, rate: ChurnRate) -> Proc:
        """Evictions as a Poisson process over the nominal pool (as `eviction_schedule`
        draws them), each evicted slot refilled after `rejoin_seconds`."""
        pool = len(self.slots)
        while not self.done.triggered:
            yield self.env.timeout(self.rng.expovariate(pool / rate.mean_seconds))
            graceful = self.rng.random() < rate.graceful
            kind = EvictionKind.GRACEFUL if graceful else EvictionKind.HARD
            self.env.process(self._evict(Eviction(self.env.now, kind, self.rng.random())))
            self.env.process(self._rejoin(rate.rejoin_seconds))

    def _rejoin(self, after: float) -> Proc:
        yield self.env.timeout(after)
        if not self.done.triggered:
            self._join_free()

    def _trace(self, actions: tuple[Join | Eviction, ...]) -> Proc:
        for action in actions:
            if self.done.triggered:
                return
            if action.at > self.env.now:
                yield self.env.timeout(action.at - self.env.now)
            if isinstance(action, Join):
                self._join_free()
            else:
                self.env.process(self._evict(action))
        self.availability_over = True
