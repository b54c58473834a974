"""Churn specifications and seeded eviction schedules (pure: no clock, no processes).

The local churn harness and the simulator both follow these schedules, so a churned run can
be repeated exactly and compared with its simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pervade.core.config import ConfigError


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


@dataclass(frozen=True, slots=True)
class Eviction:
    at: float  # seconds after the start of the run
    kind: EvictionKind
    pick: float  # in [0, 1): which of the live workers (by sorted name) to evict


def parse_churn(text: str) -> ChurnRate:
    """``rate:mtbe=60,graceful=0.5,rejoin=5,seed=1`` (mtbe in seconds per worker)."""
    kind, _, body = text.partition(":")
    if kind != "rate" or not body:
        raise ConfigError(
            f"--churn {text!r}: expected 'rate:mtbe=SECONDS[,graceful=SHARE][,rejoin=SECONDS]"
            "[,seed=N]'"
        )
    fields: dict[str, str] = {}
    for part in body.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("mtbe", "graceful", "rejoin", "seed"):
            raise ConfigError(f"--churn {text!r}: unknown or malformed field {part!r}")
        fields[key.strip()] = value.strip()
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
