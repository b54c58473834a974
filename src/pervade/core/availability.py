"""Availability timelines of real traces, and the join/evict schedules they give (pure).

A timeline is a step function of usable slots over time. The readers in `pervade.traces`
build one from a trace file; here it is settled (slots must stay up a while before they
count), cut to a window, scaled to the local pool, stretched from trace time to real time and
turned into seeded joins and evictions for the churn harness:

    settle -> window -> scale -> stretch -> schedule

Scaling rule: local workers(t) = round-half-up(slots(t) * workers / peak), where peak is the
largest slot count in the window (or slots(t) / per, when trace slots per worker are given),
then clipped to [floor, workers].
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pervade.core.churn import ChurnRate, ChurnTrace, Eviction, EvictionKind, Pick, Rng
from pervade.core.config import ConfigError

DEFAULT_SPEED = 60.0  # trace seconds per real second when neither speed nor fit is given


@dataclass(frozen=True, slots=True)
class Availability:
    """Usable slots over time: counts[i] holds from times[i] until times[i + 1], and the
    last count until `end`. Times are seconds from the start of the trace (or of the run,
    once stretched); times[0] is 0. Nothing is extrapolated past `end`."""

    times: tuple[float, ...]
    counts: tuple[int, ...]
    end: float

    def __post_init__(self) -> None:
        if not self.times or len(self.times) != len(self.counts) or self.times[0] != 0.0:
            raise ValueError("an availability timeline starts at 0 with one count per time")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("availability times must increase")
        if self.end < self.times[-1] or min(self.counts) < 0:
            raise ValueError("availability must end after its last change, with counts >= 0")

    def at(self, t: float) -> int:
        """The count in force at time `t` (the first one before 0, the last one after end)."""
        return self.counts[max(0, bisect.bisect_right(self.times, t) - 1)]

    @property
    def peak(self) -> int:
        return max(self.counts)


@dataclass(frozen=True, slots=True)
class Join:
    at: float  # seconds after the start of the run: one more worker slot appears


@dataclass(frozen=True, slots=True)
class TraceChurn:
    """A trace churn spec with its trace already read (the harness does no file I/O)."""

    spec: ChurnTrace
    timeline: Availability  # in trace seconds, as the trace file gives it


Churn = ChurnRate | TraceChurn


@dataclass(frozen=True, slots=True)
class TraceSchedule:
    pool: Availability  # local workers over real seconds since the start of the run
    actions: tuple[Join | Eviction, ...]  # in time order; the pool starts at `initial`

    @property
    def initial(self) -> int:
        return self.pool.counts[0]


def from_events(events: Iterable[tuple[float, int]]) -> Availability:
    """A timeline from (time, +1/-1) events in time order, starting from 0 slots at time 0;
    events at one instant apply together; it ends at the last event."""
    times, counts = [0.0], [0]
    for at, delta in events:
        if at < times[-1]:
            raise ValueError(f"availability events go back in time at {at} s")
        if at > times[-1]:
            times.append(at)
            counts.append(counts[-1])
        counts[-1] += delta
        if counts[-1] < 0:
            raise ValueError(f"more slots removed than added at {at} s")
    return _merged(times, counts, times[-1])


def from_counts(samples: Iterable[tuple[float, int]], hold: float = 0.0) -> Availability:
    """A timeline from (time, count) observations in increasing time order, rebased so the
    first is at 0; each count holds until the next, the last for `hold` seconds."""
    points = list(samples)
    if not points:
        raise ValueError("a timeline needs at least one observation")
    first = points[0][0]
    times = [at - first for at, _ in points]
    return _merged(times, [count for _, count in points], times[-1] + hold)


def settle(timeline: Availability, seconds: float) -> Availability:
    """Slots count only once they have been up for `seconds`; losses count at once. This is
    a sliding minimum: count(t) = min of the original over [t - seconds, t]."""
    if seconds <= 0:
        return timeline
    times, counts, n = timeline.times, timeline.counts, len(timeline.times)
    ends = [*times[1:], math.inf]  # when each segment stops holding
    edges = sorted({*times, *(t + seconds for t in times if t + seconds < timeline.end)})
    window: deque[int] = deque()  # segments overlapping [edge - seconds, edge], counts rising
    newest = -1
    out: list[int] = []
    for edge in edges:
        while newest + 1 < n and times[newest + 1] <= edge:
            newest += 1
            while window and counts[window[-1]] >= counts[newest]:
                window.pop()
            window.append(newest)
        while ends[window[0]] <= edge - seconds:
            window.popleft()
        out.append(counts[window[0]])
    return _merged(edges, out, timeline.end)


def window(timeline: Availability, start: float, length: float | None) -> Availability:
    """The part of the timeline from `start` for `length` seconds (cut at its end),
    rebased to start at 0. A change exactly at the window's end is kept: after the window
    the pool stays as the trace has it there."""
    if start >= timeline.end:
        raise ConfigError(
            f"churn start {start:g} s is at or past the end of the trace ({timeline.end:g} s)"
        )
    stop = timeline.end if length is None else min(timeline.end, start + length)
    inside = [i for i, t in enumerate(timeline.times) if start < t <= stop]
    times = [0.0, *(timeline.times[i] - start for i in inside)]
    counts = [timeline.at(start), *(timeline.counts[i] for i in inside)]
    return _merged(times, counts, stop - start)


def scale(timeline: Availability, workers: int, per: float | None, floor: int) -> Availability:
    """Trace slots to local workers (the rule in the module docstring)."""
    if floor > workers:
        raise ConfigError(f"churn floor {floor} exceeds the pool of {workers} workers")
    ratio = (1.0 / per) if per is not None else workers / max(1, timeline.peak)
    counts = [min(workers, max(floor, math.floor(c * ratio + 0.5))) for c in timeline.counts]
    return _merged(list(timeline.times), counts, timeline.end)


def stretch(timeline: Availability, speed: float) -> Availability:
    """Trace time to real time: `speed` trace seconds pass per real second."""
    return Availability(
        tuple(t / speed for t in timeline.times), timeline.counts, timeline.end / speed
    )


def trace_schedule(churn: TraceChurn, workers: int, rng: Rng) -> TraceSchedule:
    """The local pool over real time, and the joins and evictions that make it, drawn from
    `rng` (seeded with the spec's seed, a run repeats exactly)."""
    spec = churn.spec
    scaled = scale(
        window(settle(churn.timeline, spec.settle), spec.start, spec.length),
        workers,
        spec.per,
        spec.floor,
    )
    speed = spec.speed or (scaled.end / spec.fit if spec.fit else DEFAULT_SPEED)
    pool = stretch(scaled, speed)
    actions: list[Join | Eviction] = []
    for at, before, after in zip(pool.times[1:], pool.counts[:-1], pool.counts[1:], strict=True):
        actions.extend(Join(at) for _ in range(after - before))
        for _ in range(before - after):
            kind = EvictionKind.GRACEFUL if rng.random() < spec.graceful else EvictionKind.HARD
            pick = rng.random() if spec.pick is Pick.RANDOM else None
            actions.append(Eviction(at, kind, pick))
    return TraceSchedule(pool, tuple(actions))


def _merged(times: list[float], counts: list[int], end: float) -> Availability:
    """Drop changes that change nothing, so each time left is a real step."""
    kept_times, kept_counts = [times[0]], [counts[0]]
    for at, count in zip(times[1:], counts[1:], strict=True):
        if count != kept_counts[-1]:
            kept_times.append(at)
            kept_counts.append(count)
    return Availability(tuple(kept_times), tuple(kept_counts), end)
