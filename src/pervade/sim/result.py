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

    @property
    def gpu_hours(self) -> float:
        return self.goodput.worker_seconds / 3600.0


HEADER = (
    f"{'scenario':<22} {'makespan s':>11} {'GPU-h':>9} {'goodput':>8} {'re-run':>8} "
    f"{'origin GB':>10} {'loads':>6} {'evicted':>8}"
)


def table(rows: Sequence[tuple[str, SimResult]]) -> str:
    """One line per named result, under a header."""
    lines = [HEADER]
    for name, r in rows:
        lines.append(
            f"{name:<22} {r.makespan:>11.1f} {r.gpu_hours:>9.2f} {r.goodput.share:>8.1%} "
            f"{r.items_rerun:>8} {r.origin_bytes / 1e9:>10.1f} {r.loads:>6} {r.evictions:>8}"
        )
    return "\n".join(lines)


def print_table(rows: Sequence[tuple[str, SimResult]]) -> None:
    print(table(rows))
