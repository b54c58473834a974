"""The simulator's inputs: one or more jobs, a pool of GPU classes, where workers come from,
a policy, a seed.

All validated on construction (`ConfigError` naming the field), so a bad scenario stops
before any simulated second passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random

from pervade.core.availability import TraceChurn
from pervade.core.churn import ChurnRate, Eviction, eviction_schedule
from pervade.core.config import ConfigError, DispatchConfig


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class Job:
    """`items` items of one model; each takes `work_seconds` on a GPU of speed 1.0. The
    model's `context` names it: the jobs of one scenario each need their own."""

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
        if not self.context:
            raise ConfigError("job.context must be a non-empty name")


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
    """GPU classes, what builds cost, and `task_overhead_seconds`: what one task costs on a
    worker beyond its items (dispatch, batching, writing results), so tiny tasks are dear.
    `start_seconds`: how long a worker that joins after the start takes from its process
    starting to being usable (the workers there at time 0 are up already)."""

    classes: tuple[GpuClass, ...]
    loads: Loads = field(default_factory=Loads)
    task_overhead_seconds: float = 0.5
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.task_overhead_seconds >= 0:
            raise ConfigError(
                f"pool.task_overhead_seconds must be >= 0, got {self.task_overhead_seconds!r}"
            )
        if not self.start_seconds >= 0:
            raise ConfigError(f"pool.start_seconds must be >= 0, got {self.start_seconds!r}")
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


@dataclass(frozen=True, slots=True)
class Replay:
    """Given evictions over a pool kept at its size, each evicted worker replaced the way the
    local churn harness replaces it: a hard-killed worker's process is restarted at once by
    its nanny and is usable `restart_seconds` later; a gracefully evicted one gets a new
    worker process `rejoin_seconds` after the notice (whether or not the drained one has
    gone yet), usable `Pool.start_seconds` after that. An eviction that finds no live worker
    is skipped, as the harness skips it."""

    evictions: tuple[Eviction, ...]
    rejoin_seconds: float = 5.0
    restart_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.rejoin_seconds < 0 or self.restart_seconds < 0:
            raise ConfigError(
                f"replay: rejoin and restart seconds must be >= 0, got "
                f"{self.rejoin_seconds!r} and {self.restart_seconds!r}"
            )
        times = [e.at for e in self.evictions]
        if times != sorted(times) or any(t < 0 for t in times):
            raise ConfigError("replay: eviction times must be >= 0 and in order")

    @classmethod
    def of_rate(
        cls,
        rate: ChurnRate,
        workers: int,
        horizon: float,
        shift: float = 0.0,
        restart_seconds: float = 0.0,
    ) -> Replay:
        """The schedule the churn harness draws for `rate` over `workers` workers
        (`eviction_schedule` seeded with `rate.seed`), moved `shift` seconds earlier: the
        harness's clock starts before the run's (evictions due before the run's start
        happen at its start)."""
        schedule = eviction_schedule(rate, workers, horizon + shift, Random(rate.seed))
        moved = (Eviction(max(0.0, e.at - shift), e.kind, e.pick) for e in schedule)
        return cls(tuple(moved), rate.rejoin_seconds, restart_seconds)


# None: the whole pool, all the time
Availability = ChurnRate | TraceChurn | Replay | None

POLICIES = ("pervade", "reference", "naive", "static")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation: `job` (one, or several models competing for GPU memory) on `pool`.

    policy: how the pool is used, all by the same simulator and dispatcher:
        "pervade": the dispatch settings as given (adaptive sizing, speculation, prefetch)
            and graceful drain: an eviction notice cuts the running task short, reports the
            items it finished and hands back the rest.
        "reference": pervasive context management as published (Parsl + TaskVine): warm
            reuse and peer copies, but every task takes the user's `batch` items, no adaptive
            sizing, speculation or prefetch, and no drain: a worker given notice goes on
            until the grace period ends and dies with its tasks, which rerun whole.
        "naive": reference without contexts: every task (of the user's `batch`) builds its
            own context from the origin and drops it after (no reuse, peers or staging).
        "static": `static_gpus` dedicated GPUs (the first of the pool's slots; None: all)
            that arrive together after `queue_wait_seconds` and are never evicted; warm reuse.
            The availability source is not used.
    batch: the user's batch size: the dispatcher's `task_items` (pervade: where adaptive
        sizing starts; reference and naive: every task). None: pervade's own sizing, and
        `REFERENCE_BATCH` for reference and naive.
    grace_seconds: how long a graceful eviction lets the worker go on before it dies.
    """

    job: Job | tuple[Job, ...]
    pool: Pool
    availability: Availability = None
    seed: int = 0
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    policy: str = "pervade"
    batch: int | None = None
    static_gpus: int | None = None
    queue_wait_seconds: float = 0.0
    grace_seconds: float = 30.0
    sample_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        jobs = self.jobs
        if not jobs:
            raise ConfigError("job: at least one job is needed")
        names = [j.context for j in jobs]
        if len(set(names)) != len(names):
            raise ConfigError(f"job: each job needs its own context name, got {names}")
        largest = max(c.memory_bytes for c in self.pool.classes if c.count)
        for j in jobs:
            if j.model_bytes > largest:
                raise ConfigError(
                    f"job {j.context!r}: its model ({j.model_bytes} bytes) fits no GPU of "
                    f"the pool (the largest holds {largest} bytes)"
                )
        if self.batch is not None and (
            not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1
        ):
            raise ConfigError(f"batch must be a positive integer, got {self.batch!r}")
        if self.static_gpus is not None and not 1 <= self.static_gpus <= self.pool.size:
            raise ConfigError(
                f"static_gpus must be between 1 and the pool's {self.pool.size}, "
                f"got {self.static_gpus!r}"
            )
        if self.queue_wait_seconds < 0:
            raise ConfigError(f"queue_wait_seconds must be >= 0, got {self.queue_wait_seconds!r}")
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds must be >= 0, got {self.grace_seconds!r}")
        _positive("sample_seconds", self.sample_seconds)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return self.job if isinstance(self.job, tuple) else (self.job,)

    @property
    def items(self) -> int:
        return sum(j.items for j in self.jobs)

    @property
    def reuse(self) -> bool:
        """Contexts outlive their tasks (every policy but naive)."""
        return self.policy != "naive"
