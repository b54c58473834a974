"""Context builds and background copies on simulated workers.

A build brings the model's bytes onto the node (from its own staged copy, a peer, or the
origin's shared bandwidth), makes room on the GPU if other models fill it (demoting idle
ones to host memory, as `core.residency.choose_demotions` picks them), and pays the host
seconds of putting the model on the device.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from pervade.core.cache_policy import Tier
from pervade.core.events import ContextStateChanged
from pervade.core.residency import LiveContext, NoRoom, choose_demotions
from pervade.core.states import ContextState
from pervade.sim.base import Proc, SimBase, Worker


class Loading(SimBase):
    def _holder(self, w: Worker, context: str) -> bool:
        return any(
            o is not w and (context in o.live or context in o.staged) for o in self.workers.values()
        )

    def _fetch(self, w: Worker, context: str) -> Generator[simpy.Event, Any, Tier]:
        """Bring the context's bytes onto `w`'s node: from a peer if one has them, else from
        the origin (waiting for a stream of its shared bandwidth). As in the runtime, one
        reader per artifact reads the origin; the others wait for it, then copy from it."""
        loads, size = self.s.pool.loads, self.jobs[context].model_bytes
        while self.s.reuse:
            if self._holder(w, context):
                yield self.env.timeout(size / loads.peer_bandwidth)
                w.staged.add(context)
                return Tier.PEER
            pending = self.origin_reads.get(context)
            if pending is None:
                break
            yield pending  # then look again: the reader may have been evicted meanwhile
        done = self.origin_reads[context] = self.env.event()
        try:
            with self.origin.request() as request:
                yield request
                yield self.env.timeout(size * loads.origin_streams / loads.origin_bandwidth)
            self.origin_bytes += size
            if self.s.reuse:
                w.staged.add(context)  # the bytes stay on the node: peers may copy them
        finally:
            if self.origin_reads.get(context) is done:
                del self.origin_reads[context]
            done.succeed()
        return Tier.ORIGIN

    def _make_room(self, w: Worker, context: str) -> bool:
        """Demote idle live contexts until `context` fits on `w`'s GPU; False if it cannot
        (the rest are busy). Each demoted one keeps its bytes in host memory, so its next
        build costs host seconds only; the dispatcher hears that it is STAGED there."""
        queued: dict[str, int] = {}
        for task in w.queue:
            queued[task.context] = queued.get(task.context, 0) + len(task.items)
        busy = w.running.context if w.running is not None else None
        live = [
            LiveContext(c, self.jobs[c].model_bytes, used, c == busy, queued.get(c, 0))
            for c, used in sorted(w.live.items())
        ]
        try:
            demoted = choose_demotions(
                live, self.jobs[context].model_bytes, w.gpu.memory_bytes, context
            )
        except NoRoom:
            return False
        for other in demoted:
            del w.live[other]
            w.staged.add(other)
            self.demotions += 1
            self.feed(ContextStateChanged(w.name, other, ContextState.STAGED, tier=Tier.HOST))
        return True

    def _load(self, w: Worker, context: str) -> Proc:
        start = self.env.now
        try:
            if context in w.staged:
                tier = Tier.HOST
            else:
                tier = yield from self._fetch(w, context)
            if not self._make_room(w, context):
                self.feed(ContextStateChanged(w.name, context, ContextState.FAILED))
                return
            yield self.env.timeout(self.s.pool.loads.host_seconds)
        except simpy.Interrupt:
            return
        seconds = self.env.now - start
        w.live[context] = self.env.now
        self.loads += 1
        self.ledger.loaded(w.name, seconds, self.env.now)
        self.feed(ContextStateChanged(w.name, context, ContextState.WARM, seconds, tier))

    def _stage(self, w: Worker, context: str) -> Proc:
        try:
            yield from self._fetch(w, context)
        except simpy.Interrupt:
            return
        w.staged.add(context)
        self.feed(ContextStateChanged(w.name, context, ContextState.STAGED, tier=Tier.HOST))
