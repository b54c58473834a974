"""The simulator's inputs: a job, a pool of GPU classes, where workers come from, a seed.

All validated on construction (`ConfigError` naming the field), so a bad scenario stops
before any simulated second passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pervade.core.availability import TraceChurn
from pervade.core.churn import ChurnRate
from pervade.core.config import ConfigError, DispatchConfig


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class Job:
    """`items` items of one model; each takes `work_seconds` on a GPU of speed 1.0."""

    items: int
    work_seconds: float
    model_bytes: int
    context: str = "model"

    def __post_init__(self) -> None:
        if not isinstance(self.items, int) or self.items < 1:
            raise ConfigError(f"job.items must be a positive integer, got {self.items!r}")
        _positive("job.work_seconds", self.work_seconds)
        if self.model_bytes < 0:
            raise ConfigError(f"job.model_bytes must be >= 0, got {self.model_bytes!r}")


@dataclass(frozen=True, slots=True)
class GpuClass:
    """`count` GPUs of one kind; `speed` relative to the reference GPU of `Job.work_seconds`."""

    name: str
    count: int
    speed: float = 1.0
    memory_bytes: int = 80 * 10**9

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 0:
            raise ConfigError(f"gpu class {self.name!r}: count must be >= 0, got {self.count!r}")
        _positive(f"gpu class {self.name!r}: speed", self.speed)


@dataclass(frozen=True, slots=True)
class Loads:
    """What a context build costs from each tier.

    host_seconds: build from a copy in host memory (device transfer and setup); every
        build pays it last, whatever tier the bytes came from.
    disk_seconds: extra seconds to read a copy from the node's disk into memory.
    peer_bandwidth: bytes/s of one copy from a peer worker (peers do not share a link).
    origin_bandwidth: bytes/s of the origin (shared storage), shared by all its readers:
        `origin_streams` reads at a time, each at bandwidth / streams, the rest wait in
        order. Same total throughput as fair sharing, and deterministic.
    """

    host_seconds: float = 5.0
    disk_seconds: float = 10.0
    peer_bandwidth: float = 1.0 * 10**9
    origin_bandwidth: float = 1.0 * 10**9
    origin_streams: int = 4

    def __post_init__(self) -> None:
        for name in ("host_seconds", "disk_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loads.{name} must be >= 0, got {getattr(self, name)!r}")
        _positive("loads.peer_bandwidth", self.peer_bandwidth)
        _positive("loads.origin_bandwidth", self.origin_bandwidth)
        if not isinstance(self.origin_streams, int) or self.origin_streams < 1:
            raise ConfigError(f"loads.origin_streams must be >= 1, got {self.origin_streams!r}")


@dataclass(frozen=True, slots=True)
class Pool:
    classes: tuple[GpuClass, ...]
    loads: Loads = field(default_factory=Loads)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("pool: at least one GPU is needed")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"pool: GPU class names repeat: {names}")

    @property
    def size(self) -> int:
        return sum(c.count for c in self.classes)

    def slot_classes(self) -> tuple[GpuClass, ...]:
        """One class per slot, interleaved: the classes spread evenly over the slot order,
        so a trace that fills a third of the pool gets a third of each class."""
        slots: list[tuple[float, int, GpuClass]] = []
        for rank, gpu in enumerate(self.classes):
            slots += [((i + 0.5) / gpu.count, rank, gpu) for i in range(gpu.count)]
        return tuple(gpu for _, _, gpu in sorted(slots, key=lambda s: (s[0], s[1])))


Availability = ChurnRate | TraceChurn | None  # None: the whole pool, all the time


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation. `reuse` False is the naive policy: every task builds its own
    context from the origin and drops it after (no warm reuse, no peers, no staging).
    `grace_seconds`: how long a graceful eviction lets the running task finish."""

    job: Job
    pool: Pool
    availability: Availability = None
    seed: int = 0
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    reuse: bool = True
    grace_seconds: float = 30.0
    sample_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds must be >= 0, got {self.grace_seconds!r}")
        _positive("sample_seconds", self.sample_seconds)
