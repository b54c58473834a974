"""How the simulated pool grows and shrinks: evictions at a rate (each slot refilled after a
while), a given eviction schedule replayed as the local churn harness plays it, a real
trace's joins and evictions played in simulated time, or a static allocation."""

from __future__ import annotations

from pervade.core.availability import Join
from pervade.core.churn import ChurnRate, Eviction, EvictionKind
from pervade.sim.base import Proc, SimBase
from pervade.sim.model import GpuClass, Replay


class Availability(SimBase):
    """The availability processes of `Simulation`: joins and evictions, as a rate churn, a
    trace or a static allocation make them."""

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
            self.env.process(self._rejoin(rate.rejoin_seconds + self.s.pool.start_seconds))

    def _rejoin(self, after: float) -> Proc:
        yield self.env.timeout(after)
        if not self.done.triggered:
            self._join_free()

    def _replay(self, replay: Replay) -> Proc:
        """The evictions of `replay` at their times, each evicted worker replaced as the
        churn harness replaces it (see `Replay`)."""
        for eviction in replay.evictions:
            if self.done.triggered:
                return
            if eviction.at > self.env.now:
                yield self.env.timeout(eviction.at - self.env.now)
            victim = self._victim(eviction)
            if victim is None:
                continue
            if eviction.kind is EvictionKind.HARD:
                after = replay.restart_seconds
            else:
                after = replay.rejoin_seconds + self.s.pool.start_seconds
            self.env.process(self._evict(eviction))
            self.env.process(self._replace(after, victim.gpu))

    def _replace(self, after: float, gpu: GpuClass) -> Proc:
        """A new worker of class `gpu` after `after` seconds: in a free slot of that class,
        or in a slot of its own if the worker it replaces is still draining in its slot."""
        yield self.env.timeout(after)
        if self.done.triggered:
            return
        free = [slot for slot in self.free_slots if self.slots[slot] is gpu]
        if free:
            self.free_slots.remove(free[0])
            self._join(free[0])
        else:
            self.slots = (*self.slots, gpu)
            self._join(len(self.slots) - 1)

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

    def _static(self, gpus: int, wait: float) -> Proc:
        """A dedicated allocation: `gpus` workers all at once after a queue wait, for good."""
        if wait > 0:
            yield self.env.timeout(wait)
        for _ in range(gpus):
            self._join_free()
        self.availability_over = True
