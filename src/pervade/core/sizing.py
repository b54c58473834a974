"""How many items one task should take: from the worker's measured speed, the eviction hazard
its GPU class has shown, the fixed cost of a task, and the backlog's fair share.

The trade is the one of checkpoint intervals (Young 1974, Daly 2006): a longer task pays its
fixed overhead less often but loses more work when a hard eviction hits it mid-way. With
overhead C and mean time between losses M, the task length that minimises the expected
waste is about sqrt(2·C·M). Two more bounds apply: no task longer than the worker's share of
the backlog, so that the last tasks end together and the tail stays short.

Pure: join and leave times arrive as data; nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Before any loss is seen, a class is believed to lose a worker once per this many
# worker-seconds, weighted as this many seconds of observation: a pool quiet for its first
# minutes is not taken to be immortal, and one eviction early on does not halve the tasks.
PRIOR_MEAN_SECONDS = 6 * 3600.0
PRIOR_WEIGHT_SECONDS = 3600.0


@dataclass(slots=True)
class Hazard:
    """Hard losses (a worker gone with its work) per GPU class, over the worker-seconds
    observed: closed spans of departed workers plus the open spans of those still here."""

    _closed: dict[str, float] = field(default_factory=dict)
    _open_count: dict[str, int] = field(default_factory=dict)
    _open_since: dict[str, float] = field(default_factory=dict)  # sum of join times
    _losses: dict[str, int] = field(default_factory=dict)

    def joined(self, gpu_class: str, now: float) -> None:
        self._open_count[gpu_class] = self._open_count.get(gpu_class, 0) + 1
        self._open_since[gpu_class] = self._open_since.get(gpu_class, 0.0) + now

    def left(self, gpu_class: str, joined: float, now: float, lost: bool) -> None:
        """A worker that joined at `joined` left; `lost`: without handing its work back."""
        self._open_count[gpu_class] = self._open_count.get(gpu_class, 1) - 1
        self._open_since[gpu_class] = self._open_since.get(gpu_class, joined) - joined
        self._closed[gpu_class] = self._closed.get(gpu_class, 0.0) + max(0.0, now - joined)
        if lost:
            self._losses[gpu_class] = self._losses.get(gpu_class, 0) + 1

    def moved(self, old: str, new: str, joined: float) -> None:
        """A worker of class `old`, here since `joined`, turned out to be of class `new`:
        its time so far counts for `new`."""
        self._open_count[old] = self._open_count.get(old, 1) - 1
        self._open_since[old] = self._open_since.get(old, joined) - joined
        self._open_count[new] = self._open_count.get(new, 0) + 1
        self._open_since[new] = self._open_since.get(new, 0.0) + joined

    def _exposure(self, gpu_class: str, now: float) -> float:
        open_seconds = self._open_count.get(gpu_class, 0) * now - self._open_since.get(
            gpu_class, 0.0
        )
        return self._closed.get(gpu_class, 0.0) + max(0.0, open_seconds)

    def losses(self, gpu_class: str) -> int:
        return self._losses.get(gpu_class, 0)

    def mean_seconds(self, gpu_class: str, now: float) -> float:
        """Expected worker-seconds between hard losses in this class. The whole pool's
        estimate serves as the prior, so a class seen briefly leans on the others."""
        classes = set(self._closed) | set(self._open_count)
        pool_exposure = sum(self._exposure(c, now) for c in classes)
        pool_losses = sum(self._losses.values())
        pool = (pool_exposure + PRIOR_MEAN_SECONDS) / (pool_losses + 1)
        exposure = self._exposure(gpu_class, now)
        return (exposure + PRIOR_WEIGHT_SECONDS) / (
            self.losses(gpu_class) + PRIOR_WEIGHT_SECONDS / pool
        )


def young_daly_seconds(overhead: float, mean_between_losses: float) -> float:
    """The task length that balances per-task overhead against work lost to evictions."""
    return math.sqrt(2.0 * max(overhead, 1e-3) * mean_between_losses)


@dataclass(frozen=True, slots=True)
class SizeInputs:
    """What sizing knows about one worker and one context's backlog."""

    pending: int  # items of the context waiting for a task
    rate: float | None  # this worker's items/s on the context (its class's, if unmeasured)
    share: float  # this worker's share of the context's warm speed, 0..1
    slots: int  # tasks one worker holds at once
    mean_between_losses: float  # seconds, for this worker's class


def adaptive_size(
    inputs: SizeInputs,
    overhead: float,
    tasks_per_slot: int,
    start: int,
    bounds: tuple[int, int],
) -> int:
    """Items for the next task of a worker.

    Unmeasured speed: `start` (the user's batch size or the default). Measured: the
    Young/Daly length at the worker's speed. Either way no more than the worker's fair share
    of the backlog: its share of the warm speed, split into `tasks_per_slot` tasks per slot,
    so tasks shrink as the backlog does and the last ones end together."""
    low, high = bounds
    fair = max(1.0, inputs.pending * inputs.share / (inputs.slots * tasks_per_slot))
    if inputs.rate is None or inputs.rate <= 0:
        size = min(float(start), fair)
    else:
        best = young_daly_seconds(overhead, inputs.mean_between_losses) * inputs.rate
        size = min(best, fair)
    return max(low, min(high, inputs.pending, max(1, math.ceil(size))))
