"""Events and configs shared by the dispatcher tests (tests/test_core_*.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pervade.core import (
    ContextState,
    ContextStateChanged,
    Decision,
    DispatchConfig,
    Dispatcher,
    ItemRef,
    RunTask,
    WorkerJoined,
)
from pervade.core.cache_policy import Tier

CTX = "ctx-a"
OTHER = "ctx-other"
TIERS = (None, *Tier)
D = TypeVar("D")


def of(kind: type[D], decisions: Iterable[Decision]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def refs(prefix: str, n: int, cost: int = 1) -> tuple[ItemRef, ...]:
    return tuple(ItemRef(f"{prefix}{k}", cost) for k in range(n))


def join_warm(d: Dispatcher, worker: str, now: float = 0.0) -> list[Decision]:
    """A worker joins and reports the context live, as after a LoadContext."""
    out = d.handle(WorkerJoined(worker), now)
    assert not of(RunTask, out)
    return out + d.handle(ContextStateChanged(worker, CTX, ContextState.WARM, 1.0), now)


def config(**overrides: int) -> DispatchConfig:
    values = {
        "max_in_flight": 1,
        "min_task_items": 4,
        "max_task_items": 4,
        "tasks_per_slot": 1,
        "max_failures": 3,
        "max_load_failures": 2,
    }
    values.update(overrides)
    return DispatchConfig(**values)
