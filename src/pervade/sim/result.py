"""What a simulation measured, and the comparison table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pervade.core.accounting import Goodput


@dataclass(frozen=True, slots=True)
class Sample:
    """The pool at the end of one sampling interval."""

    at: float  # simulated seconds
    active_workers: int
    throughput: float  # items completed per second over the interval
    backlog: int  # items not completed yet


@dataclass(frozen=True, slots=True)
class Advice:
    """A `ScaleAdvice` the dispatcher gave: at `at` it would use `workers` (`change` more)."""

    at: float
    workers: int
    change: int
    reason: str


@dataclass(frozen=True, slots=True)
class SimResult:
    makespan: float  # simulated seconds until the last item completed
    items: int
    completed: int  # items with an outcome (all of them, unless the pool emptied)
    goodput: Goodput
    items_rerun: int  # item attempts lost with a worker evicted under them
    origin_bytes: int  # bytes read from the origin (builds and stages)
    loads: int  # context builds finished
    evictions: int
    series: tuple[Sample, ...]
    log: tuple[str, ...]  # every event fed to the dispatcher, when asked for
    policy: str = "pervade"
    duplicates: int = 0  # item completions dropped: another copy's outcome came first
    cancelled: int = 0  # running tasks stopped by the dispatcher (speculative losers)
    demotions: int = 0  # live contexts demoted to host memory to make room for another
    advice: tuple[Advice, ...] = ()  # scaling advice, each time the advised size changed

    @property
    def gpu_hours(self) -> float:
        return self.goodput.worker_seconds / 3600.0


COLUMNS = (
    f"{'makespan s':>11} {'GPU-h':>9} {'goodput':>8} {'re-run':>8} "
    f"{'origin GB':>10} {'loads':>6} {'evicted':>8}"
)


def table(rows: Sequence[tuple[str, SimResult]]) -> str:
    """One line per named result, under a header."""
    width = max([22, *(len(name) for name, _ in rows)])
    lines = [f"{'scenario':<{width}} {COLUMNS}"]
    for name, r in rows:
        lines.append(
            f"{name:<{width}} {r.makespan:>11.1f} {r.gpu_hours:>9.2f} {r.goodput.share:>8.1%} "
            f"{r.items_rerun:>8} {r.origin_bytes / 1e9:>10.1f} {r.loads:>6} {r.evictions:>8}"
        )
    return "\n".join(lines)


def print_table(rows: Sequence[tuple[str, SimResult]]) -> None:
    print(table(rows))
