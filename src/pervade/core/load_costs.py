"""What a context build costs, by the tier its artifacts come from, and how fast warm workers
drain a backlog: the two numbers the dispatcher weighs before it starts a cold build.

Pure: load seconds and task timings arrive as data (from the workers' reports and the `now`
the dispatcher is handed); nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pervade.core.cache_policy import Tier

# Seconds per load before anything was measured. Only their order and ratios matter much:
# an unmeasured tier is estimated from the nearest measured one scaled by these ratios, so a
# run whose origin loads take 2 s does not believe a peer load takes 20.
DEFAULT_LOAD_SECONDS: dict[Tier, float] = {
    Tier.GPU: 0.0,
    Tier.HOST: 5.0,
    Tier.DISK: 10.0,
    Tier.PEER: 20.0,
    Tier.ORIGIN: 60.0,
}

# Weight of the newest sample in a running estimate: recent loads say most about the node's
# disks and network now, but one slow load (a busy origin) should not swing the estimate.
SMOOTHING = 0.3


def parse_tier(value: object) -> Tier | None:
    """A tier from a worker's message ("host", "peer"...); None when absent or unknown, so a
    message from an older or newer worker never breaks the driver."""
    if isinstance(value, Tier):
        return value
    try:
        return Tier(value)
    except ValueError:
        return None


def _smooth(old: float | None, sample: float) -> float:
    return sample if old is None else old + SMOOTHING * (sample - old)


@dataclass(slots=True)
class LoadCosts:
    """Running estimates of a context build's seconds, per tier and per (context, tier)."""

    defaults: dict[Tier, float] = field(default_factory=lambda: dict(DEFAULT_LOAD_SECONDS))
    _tier: dict[Tier, float] = field(default_factory=dict)
    _context: dict[tuple[str, Tier], float] = field(default_factory=dict)
    # A context without artifacts costs the same wherever it is built (its loader alone).
    _untiered: dict[str, float] = field(default_factory=dict)

    def record(self, context: str, tier: Tier | None, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"load seconds must be >= 0, got {seconds}")
        if tier is None:
            self._untiered[context] = _smooth(self._untiered.get(context), seconds)
            return
        self._tier[tier] = _smooth(self._tier.get(tier), seconds)
        key = (context, tier)
        self._context[key] = _smooth(self._context.get(key), seconds)

    def measured(self, tier: Tier) -> bool:
        return tier in self._tier

    def estimate(self, tier: Tier, context: str | None = None) -> float:
        """Expected seconds to build `context` (any context when None) from `tier`."""
        if context is not None:
            if (context, tier) in self._context:
                return self._context[(context, tier)]
            if context in self._untiered:
                return self._untiered[context]
        if tier in self._tier:
            return self._tier[tier]
        order = list(Tier)
        measured = sorted(self._tier, key=lambda t: abs(order.index(t) - order.index(tier)))
        if measured:
            nearest = measured[0]
            base = self.defaults[nearest]
            if base > 0:
                return self._tier[nearest] * self.defaults[tier] / base
        return self.defaults[tier]


@dataclass(slots=True)
class Throughput:
    """Items per second of each warm worker on each context, from its finished tasks, and
    of each GPU class (which outlives its workers: a new worker of a known class starts
    from what its class has shown).

    A task's work starts when it started or when the worker's previous task finished,
    whichever is later: a task queued behind another is not charged its wait.
    """

    _rate: dict[tuple[str, str], float] = field(default_factory=dict)
    _class_rate: dict[tuple[str, str], float] = field(default_factory=dict)
    _context_rate: dict[str, float] = field(default_factory=dict)
    _classes: dict[str, str] = field(default_factory=dict)
    _last_finish: dict[str, float] = field(default_factory=dict)

    def joined(self, worker: str, gpu_class: str) -> None:
        self._classes[worker] = gpu_class

    def finished(self, worker: str, context: str, items: int, started: float, now: float) -> None:
        began = max(started, self._last_finish.get(worker, started))
        self._last_finish[worker] = now
        span = now - began
        if items <= 0 or span <= 0:
            return  # nothing ran, or the clock did not move: no evidence of speed
        rate = items / span
        key = (worker, context)
        self._rate[key] = _smooth(self._rate.get(key), rate)
        ckey = (self._classes.get(worker, ""), context)
        self._class_rate[ckey] = _smooth(self._class_rate.get(ckey), rate)
        self._context_rate[context] = _smooth(self._context_rate.get(context), rate)

    def forget(self, worker: str) -> None:
        self._last_finish.pop(worker, None)
        self._classes.pop(worker, None)
        for key in [k for k in self._rate if k[0] == worker]:
            del self._rate[key]

    def rate(self, worker: str, context: str) -> float | None:
        return self._rate.get((worker, context))

    def estimate(self, worker: str, context: str) -> float | None:
        """The worker's own items/s on `context`, else its class's, else any worker's."""
        own = self._rate.get((worker, context))
        if own is not None:
            return own
        by_class = self._class_rate.get((self._classes.get(worker, ""), context))
        return by_class if by_class is not None else self._context_rate.get(context)

    def mean(self, context: str) -> float | None:
        """Items/s of the typical worker on `context` (any class)."""
        return self._context_rate.get(context)

    def combined(self, workers: list[str] | set[str], context: str) -> float | None:
        """Items/s of these workers together on `context`, each as `estimate` has it. None
        when no estimate exists at all: speed unknown."""
        total, known = 0.0, False
        for worker in workers:
            rate = self.estimate(worker, context)
            if rate is not None:
                total, known = total + rate, True
        return total if known else None


def build_pays_off(load_seconds: float, remaining_items: int, warm_rate: float | None) -> bool:
    """Whether a new build would still have work when it completes: false when the warm
    workers (together `warm_rate` items/s) finish the `remaining_items` sooner. Unknown
    speed, or no warm worker, always builds."""
    if warm_rate is None or warm_rate <= 0:
        return True
    return remaining_items / warm_rate > load_seconds
