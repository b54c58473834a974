"""Which live contexts of one worker to demote (GPU to HOST) to make room for another.

Demoting drops the live model but keeps its files on the node, so bringing it back costs a
HOST or DISK load rather than a fetch. Pure: the caller says what is live, how big each is on
the device, when each was last used (any clock, as data), whether it is running a task and
how much work is still queued for it; the answer is the contexts to demote, least valuable
first, or `NoRoom` when demoting every idle one is not enough.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LiveContext:
    context: str
    device_bytes: int  # what demoting it frees on the device
    last_used: float  # seconds on any clock: only the order matters
    busy: bool = False  # running a task: never demoted under it
    queued_items: int = 0  # work still waiting for it, where known: the value of keeping it


class NoRoom(RuntimeError):
    """No choice of idle live contexts frees enough device memory."""


def choose_demotions(
    live: Iterable[LiveContext], needed: int, budget: int, name: str = "context"
) -> tuple[str, ...]:
    """Contexts to demote so that `needed` more bytes fit within the device `budget`.

    Least valuable first: those without queued work before those with some, fewer queued
    items before more, then least recently used. Only as many as the room asks for."""
    if needed < 0:
        raise ValueError(f"needed bytes must be >= 0, got {needed}")
    if budget < 0:
        raise ValueError(f"device budget must be >= 0, got {budget}")
    if needed > budget:
        raise NoRoom(
            f"{name} needs {needed} bytes of device memory, more than the whole budget of "
            f"{budget} bytes: no demotion can make room"
        )
    held = list(live)
    to_free = max(0, sum(c.device_bytes for c in held) + needed - budget)
    chosen: list[str] = []
    freed = 0
    for entry in sorted(held, key=lambda c: (c.queued_items, c.last_used, c.context)):
        if freed >= to_free:
            break
        if entry.busy:
            continue
        chosen.append(entry.context)
        freed += entry.device_bytes
    if freed < to_free:
        busy = [c.context[:12] for c in held if c.busy]
        raise NoRoom(
            f"{name} needs {needed} bytes of device memory: demoting every idle live context "
            f"frees {freed} of the {to_free} bytes short; busy contexts "
            f"({', '.join(busy) or 'none'}) cannot be demoted under their tasks"
        )
    return tuple(chosen)
