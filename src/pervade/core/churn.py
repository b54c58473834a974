"""Churn specifications and seeded eviction schedules (pure: no clock, no processes).

The local churn harness and the simulator both follow these schedules, so a churned run can
be repeated exactly and compared with its simulation. Two kinds of churn: a rate (evictions
as a Poisson process, see `ChurnRate`) and a real availability trace (see `ChurnTrace`; its
timeline and schedule are in `pervade.core.availability`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from pervade.core.config import ConfigError

T = TypeVar("T")


class Rng(Protocol):
    """The part of `random.Random` a schedule needs; the caller seeds it (core reads no
    randomness of its own)."""

    def random(self) -> float: ...

    def expovariate(self, lambd: float, /) -> float: ...


class EvictionKind(Enum):
    HARD = "hard"  # killed without notice
    GRACEFUL = "graceful"  # signalled first, then given a grace period


@dataclass(frozen=True, slots=True)
class ChurnRate:
    """Evictions as a Poisson process: each worker is evicted on average every
    `mean_seconds`; `graceful` is the share of evictions that come with notice; an evicted
    worker is replaced after `rejoin_seconds` (an opportunistic pool refilling)."""

    mean_seconds: float
    graceful: float = 0.5
    rejoin_seconds: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mean_seconds <= 0:
            raise ConfigError(f"churn mtbe must be positive seconds, got {self.mean_seconds}")
        if not 0.0 <= self.graceful <= 1.0:
            raise ConfigError(f"churn graceful must be a share in [0, 1], got {self.graceful}")
        if self.rejoin_seconds < 0:
            raise ConfigError(f"churn rejoin must be >= 0 seconds, got {self.rejoin_seconds}")


class Pick(Enum):
    """Which live worker a trace eviction takes: counts say how many slots went, not which."""

    STACK = "stack"  # the newest worker first (the traces' "slot stack" convention)
    RANDOM = "random"  # a seeded random one


@dataclass(frozen=True, slots=True)
class ChurnTrace:
    """Churn that follows a real availability trace (all trace times in trace seconds).

    source: a named bundled trace (see `pervade.traces`) or a path to a trace file.
    start, length: the window of the trace to play (length None: to the trace's end).
    speed: trace seconds per real second; fit: play the window in this many real seconds
        instead (at most one of the two; neither: speed 60, a trace minute per second).
    per: trace slots per local worker; None: the window's peak fills the whole pool.
    floor: never fewer local workers than this (1 lets a run finish whatever the trace).
    settle: a slot becomes a worker only once it has been available this long; removals
        are immediate. Backfill pools wait like this, since a worker needs minutes to start.
    graceful: share of evictions that come with notice (SIGTERM) instead of a kill.
    pick: which worker an eviction takes.
    seed: seeds the graceful/hard draws and random picks, so a run can be repeated.
    """

    source: str
    start: float = 0.0
    length: float | None = None
    speed: float | None = None
    fit: float | None = None
    per: float | None = None
    floor: int = 0
    settle: float = 0.0
    graceful: float = 0.5
    pick: Pick = Pick.STACK
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("churn trace: name a trace or a trace file")
        if self.start < 0:
            raise ConfigError(f"churn start must be >= 0, got {self.start}")
        if self.length is not None and self.length <= 0:
            raise ConfigError(f"churn length must be positive, got {self.length}")
        if self.speed is not None and self.fit is not None:
            raise ConfigError("churn speed and fit exclude each other: give one")
        for name in ("speed", "fit", "per"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"churn {name} must be positive, got {value}")
        if self.floor < 0:
            raise ConfigError(f"churn floor must be >= 0 workers, got {self.floor}")
        if self.settle < 0:
            raise ConfigError(f"churn settle must be >= 0, got {self.settle}")
        if not 0.0 <= self.graceful <= 1.0:
            raise ConfigError(f"churn graceful must be a share in [0, 1], got {self.graceful}")


@dataclass(frozen=True, slots=True)
class Eviction:
    at: float  # seconds after the start of the run
    kind: EvictionKind
    # In [0, 1): which of the live workers (by sorted name) to evict; None: the newest one.
    pick: float | None


RATE_USAGE = "rate:mtbe=SECONDS[,graceful=SHARE][,rejoin=SECONDS][,seed=N]"
TRACE_USAGE = (
    "trace:NAME_OR_PATH[,start=DURATION][,length=DURATION][,speed=X|fit=DURATION][,per=N]"
    "[,floor=N][,settle=DURATION][,graceful=SHARE][,pick=stack|random][,seed=N]"
)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_churn(text: str) -> ChurnRate | ChurnTrace:
    """``rate:mtbe=60,graceful=0.5,rejoin=5,seed=1`` (mtbe in seconds per worker), or
    ``trace:bamboo-p3,start=2h,fit=120,graceful=0.5,seed=3`` (see `ChurnTrace`)."""
    kind, _, body = text.partition(":")
    if kind == "trace" and body:
        return _parse_trace(text, body)
    if kind != "rate" or not body:
        raise ConfigError(f"--churn {text!r}: expected '{RATE_USAGE}' or '{TRACE_USAGE}'")
    fields = _fields(text, body.split(","), ("mtbe", "graceful", "rejoin", "seed"))
    if "mtbe" not in fields:
        raise ConfigError(f"--churn {text!r}: mtbe (mean time between evictions) is required")
    try:
        return ChurnRate(
            mean_seconds=float(fields["mtbe"]),
            graceful=float(fields.get("graceful", 0.5)),
            rejoin_seconds=float(fields.get("rejoin", 5.0)),
            seed=int(fields.get("seed", 0)),
        )
    except ValueError as exc:
        raise ConfigError(f"--churn {text!r}: {exc}") from None


def parse_duration(value: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2.5h`` or ``3d``."""
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "s")
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{value!r} is not a duration (like 90, 90s, 15m, 2.5h, 3d)") from None


def _parse_trace(text: str, body: str) -> ChurnTrace:
    source, *parts = body.split(",")
    names = ("start", "length", "speed", "fit", "per", "floor", "settle", "graceful", "pick")
    fields = _fields(text, parts, (*names, "seed"))

    def field(key: str, convert: Callable[[str], T]) -> T | None:
        if key not in fields:
            return None
        try:
            return convert(fields[key])
        except ValueError as exc:
            raise ConfigError(f"--churn {text!r}: field {key}: {exc}") from None

    graceful, floor, seed = field("graceful", float), field("floor", int), field("seed", int)
    return ChurnTrace(
        source.strip(),
        start=field("start", parse_duration) or 0.0,
        length=field("length", parse_duration),
        speed=field("speed", float),
        fit=field("fit", parse_duration),
        per=field("per", float),
        floor=floor if floor is not None else 0,
        settle=field("settle", parse_duration) or 0.0,
        graceful=graceful if graceful is not None else 0.5,
        pick=field("pick", _pick) or Pick.STACK,
        seed=seed if seed is not None else 0,
    )


def _pick(value: str) -> Pick:
    try:
        return Pick(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of stack, random") from None


def _fields(text: str, parts: list[str], names: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in names:
            raise ConfigError(
                f"--churn {text!r}: unknown or malformed field {part!r} (known: {', '.join(names)})"
            )
        fields[key.strip()] = value.strip()
    return fields


def eviction_schedule(rate: ChurnRate, workers: int, horizon: float, rng: Rng) -> list[Eviction]:
    """Evictions over `horizon` seconds for a pool kept at `workers` workers, drawn from
    `rng` (seeded with `rate.seed`, a run repeats exactly).

    The pool as a whole sees evictions at `workers / mean_seconds` per second.
    """
    if workers < 1:
        return []
    schedule: list[Eviction] = []
    now = 0.0
    while True:
        now += rng.expovariate(workers / rate.mean_seconds)
        if now >= horizon:
            return schedule
        kind = EvictionKind.GRACEFUL if rng.random() < rate.graceful else EvictionKind.HARD
        schedule.append(Eviction(now, kind, rng.random()))
