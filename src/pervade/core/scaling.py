"""Scaling advice: how many workers the backlog would use well, with hysteresis (pure).

The advisor learns two things from worker membership: the start-up time (join to first warm
context) and the eviction interval (worker-seconds per eviction, an exponentially fading
estimate so that a pool that calms down is believed). From these and the backlog in GPU-seconds
it computes a target, then holds back: a change must leave a dead band, persist (a release
longer than a request) and wait for the last change to settle, so a noisy backlog never makes
the cluster grow and shrink in turn.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pervade.core.config import ConfigError
from pervade.core.decisions import ScaleAdvice


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """How the scaling advisor weighs backlog, start-up and evictions.

    horizon: seconds in which the backlog should be finished; the target is the number of
        workers that does it (a new worker contributes `horizon - start-up` of it).
    startup_seconds: start-up assumed until a worker has been seen to become ready.
    worth_margin: a worker is requested only while the backlog per worker at the target lasts
        at least this many start-ups: a new worker must work well beyond its own start-up.
    band: the target must differ from the current count by more than this share of it (and by
        at least one worker) before a change is advised.
    grow_after / release_after: seconds a shortfall / a surplus must persist before a request
        / a release is advised, which then goes only as far as the least shortfall / surplus
        seen over that time; a release waits longer, since a released worker is hard to get
        back and a request is cheap to cancel. With no workers at all, a request is at once.
    min_interval: seconds between two advised changes, so the last one can take effect.
    memory: seconds over which observed evictions fade (time constant).
    min_useful: the least share of its time a worker is assumed useful, however often workers
        are evicted: bounds the extra workers asked for to 1 / min_useful times.
    samples: start-up observations averaged (the newest).
    min_workers / max_workers: bounds on the advice (max None: no bound).
    """

    horizon: float = 3600.0
    startup_seconds: float = 300.0
    worth_margin: float = 2.0
    band: float = 0.1
    grow_after: float = 120.0
    release_after: float = 600.0
    min_interval: float = 120.0
    memory: float = 3600.0
    min_useful: float = 0.25
    samples: int = 16
    min_workers: int = 0
    max_workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("horizon", "memory"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"scaling.{name} must be positive finite seconds, got {value!r}")
        for name in (
            "startup_seconds",
            "worth_margin",
            "grow_after",
            "release_after",
            "min_interval",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"scaling.{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.band < 1:
            raise ConfigError(f"scaling.band must be a share in [0, 1), got {self.band!r}")
        if not 0 < self.min_useful <= 1:
            raise ConfigError(
                f"scaling.min_useful must be a share in (0, 1], got {self.min_useful!r}"
            )
        if self.release_after < self.grow_after:
            raise ConfigError(
                f"scaling.release_after ({self.release_after}) must be at least "
                f"scaling.grow_after ({self.grow_after}): a surplus waits longer than a shortfall"
            )
        for name, least in (("samples", 1), ("min_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"scaling.{name} must be an integer >= {least}, got {value!r}")
        top = self.max_workers
        if top is not None and (
            not isinstance(top, int) or isinstance(top, bool) or top < max(1, self.min_workers)
        ):
            raise ConfigError(
                f"scaling.max_workers must be None or an integer >= max(1, scaling.min_workers), "
                f"got {top!r}"
            )


class ScalingAdvisor:
    """Observes workers joining, becoming ready and leaving; advises a worker count."""

    def __init__(self, config: ScalingConfig | None = None) -> None:
        self.config = config or ScalingConfig()
        self._joined: dict[str, float] = {}  # live workers: when each joined
        self._counted: set[str] = set()  # live workers whose start-up is already recorded
        self._startups: deque[float] = deque(maxlen=self.config.samples)
        self._exposure = 0.0  # fading worker-seconds observed
        self._evictions = 0.0  # fading count of evictions
        self._clock: float | None = None
        self._last: ScaleAdvice | None = None
        self._last_at = -math.inf
        self._recent: deque[tuple[float, int]] = deque()  # (now, target) over release_after

    # -- observations ---------------------------------------------------------------------

    def joined(self, worker: str, now: float) -> None:
        self._advance(now)
        self._joined.setdefault(worker, now)

    def ready(self, worker: str, now: float) -> None:
        """The worker's first context is warm: its start-up is over (counted once)."""
        start = self._joined.get(worker)
        if start is not None and worker not in self._counted:
            self._startups.append(max(0.0, now - start))
            self._counted.add(worker)

    def left(self, worker: str, now: float, evicted: bool) -> None:
        """A worker left; `evicted` when it was taken (not released or finished)."""
        self._advance(now)
        self._counted.discard(worker)
        if self._joined.pop(worker, None) is not None and evicted:
            self._evictions += 1.0

    @property
    def startup_seconds(self) -> float:
        """Mean observed start-up, or the configured one before any was observed."""
        if not self._startups:
            return self.config.startup_seconds
        return sum(self._startups) / len(self._startups)

    @property
    def eviction_interval(self) -> float:
        """Observed worker-seconds per eviction; infinite before any eviction."""
        return self._exposure / self._evictions if self._evictions > 0 else math.inf

    def _advance(self, now: float) -> None:
        if self._clock is not None and now > self._clock:
            keep = math.exp(-(now - self._clock) / self.config.memory)
            live = len(self._joined)
            self._exposure = self._exposure * keep + live * self.config.memory * (1 - keep)
            self._evictions *= keep
        if self._clock is None or now > self._clock:
            self._clock = now

    # -- advice ---------------------------------------------------------------------------

    def advise(
        self, now: float, backlog_seconds: float, workers: int, *, idle: int, items: int
    ) -> ScaleAdvice | None:
        """Advice for `workers` current workers (`idle` of them without a task) and a backlog
        of `backlog_seconds` GPU-seconds in `items` items (pending and in flight); None while
        the standing advice holds."""
        self._advance(now)
        cfg = self.config
        target, why = self._target(max(0.0, backlog_seconds), workers, items)
        self._recent.append((now, target))
        while len(self._recent) > 1 and self._recent[1][0] <= now - cfg.release_after:
            self._recent.popleft()
        if now - self._last_at < cfg.min_interval:
            return None
        # A request goes to the least wanted over grow_after, a release to the most wanted over
        # release_after: a passing peak or dip in the backlog moves neither.
        grow = target if workers == 0 else self._settled(now, cfg.grow_after, min)
        shrink = self._settled(now, cfg.release_after, max)
        if grow is not None and grow > workers and self._beyond_band(grow, workers):
            advised, why = grow, f"{why}; request {grow - workers}"
            if workers:
                why += f" (at least {grow} wanted throughout the last {cfg.grow_after:.0f} s)"
        elif (
            shrink is not None
            and shrink < workers
            and self._beyond_band(shrink, workers)
            and idle > 0
        ):
            release = min(workers - shrink, idle)
            advised = workers - release
            why += f"; release {release} idle (at most {shrink} wanted throughout the last"
            why += f" {cfg.release_after:.0f} s)"
        else:
            return None
        if self._last is not None and self._last.workers == advised:
            return None
        self._last = ScaleAdvice(workers=advised, change=advised - workers, reason=why)
        self._last_at = now
        return self._last

    def _beyond_band(self, wanted: int, workers: int) -> bool:
        gap = abs(wanted - workers)
        return gap >= 1 and gap > self.config.band * workers

    def _settled(self, now: float, window: float, pick: Callable[[list[int]], int]) -> int | None:
        """min or max of the targets wanted over the last `window` seconds; None until the
        observations cover that long."""
        if self._recent[0][0] > now - window:
            return None
        seen: list[int] = []
        for at, wanted in reversed(self._recent):
            seen.append(wanted)
            if at <= now - window:
                break  # the target that stood when the window began
        return pick(seen)

    def _target(self, backlog: float, workers: int, items: int) -> tuple[int, str]:
        cfg = self.config
        startup = self.startup_seconds
        interval = self.eviction_interval
        useful = min(1.0, max(cfg.min_useful, 1.0 - startup / interval))
        why = f"backlog {backlog / 3600:.2f} GPU-hours for a {cfg.horizon / 3600:.2f} h horizon"
        why += f", start-up {startup:.0f} s, "
        if math.isinf(interval):
            why += "no evictions seen"
        else:
            why += f"a worker evicted every {interval:.0f} s (useful {useful:.0%} of its time)"
        note = ""
        current = useful * cfg.horizon * workers  # what the current workers finish in time
        if backlog <= current:
            target = _ceil(backlog / (useful * cfg.horizon))
        else:
            per_new = useful * (cfg.horizon - startup)
            extra = _ceil((backlog - current) / per_new) if per_new > 0 else items
            # A request pays only while each worker's share outlasts start-up by the margin.
            hurdle = useful * cfg.worth_margin * startup
            worth = math.floor(backlog / hurdle + 1e-9) if hurdle > 0 else workers + extra
            if worth < workers + extra:
                note = f" (more would not work {cfg.worth_margin:g}× their start-up)"
            target = max(workers, min(workers + extra, worth))
        if backlog > 0 and items > 0:
            target = max(target, 1)  # some worker must finish it, however small
        if target > items:
            target, note = max(0, items), " (one per item left)"
        target = max(target, cfg.min_workers)
        if cfg.max_workers is not None and target > cfg.max_workers:
            target, note = cfg.max_workers, " (scaling.max_workers)"
        return target, f"{why}: {target} worker{'' if target == 1 else 's'} wanted{note}"


def _ceil(value: float) -> int:
    """math.ceil that ignores rounding error: 4.000000001 workers are 4."""
    return math.ceil(value - 1e-9)
