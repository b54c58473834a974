"""A worker that names its GPU class after it joined: speed and hazard follow the class."""

from __future__ import annotations

import pytest

from pervade.core import (
    ContextState,
    ContextStateChanged,
    DispatchConfig,
    Dispatcher,
    ItemRef,
    ItemsSubmitted,
    RunTask,
    TaskFinished,
    WorkerClassified,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.sizing import Hazard

CTX = "ctx-a"


def runs(decisions: list[object]) -> list[RunTask]:
    return [d for d in decisions if isinstance(d, RunTask)]


def test_a_class_named_late_carries_the_time_so_far_and_later_losses() -> None:
    hazard = Hazard()
    hazard.joined("", 0.0)  # joined before it knew its GPU
    hazard.moved("", "spot", 0.0)
    hazard.left("spot", 0.0, 600.0, lost=True)
    assert hazard.losses("spot") == 1 and hazard.losses("") == 0
    # Its 600 s count for "spot", none for the unnamed class: the only loss over 600 s
    # of "spot" makes its mean far shorter than the pool prior of hours.
    assert hazard.mean_seconds("spot", 600.0) < hazard.mean_seconds("", 600.0)


def test_a_new_worker_of_a_named_class_starts_from_that_class_speed() -> None:
    d = Dispatcher(DispatchConfig(speculate=False, max_in_flight=1))
    d.handle(ItemsSubmitted(CTX, tuple(ItemRef(f"i{k}") for k in range(5000))), 0.0)
    speeds = {"fast": ("h100", 100.0), "slow": ("t4", 10.0)}
    for worker, (gpu_class, _) in speeds.items():
        d.handle(WorkerJoined(worker), 0.0)  # joined before it named its GPU
        d.handle(WorkerClassified(worker, gpu_class), 0.5)
        assert d._roster.get(worker).gpu_class == gpu_class  # type: ignore[union-attr]
        (task,) = runs(d.handle(ContextStateChanged(worker, CTX, ContextState.WARM, 1.0), 1.0))
        d.handle(TaskFinished(task.task), 1.0 + len(task.items) / speeds[worker][1])
    now = 1000.0
    for worker, gpu_class in (("new-h100", "h100"), ("new-t4", "t4"), ("unnamed", "")):
        d.handle(WorkerJoined(worker), now)
        if gpu_class:
            d.handle(WorkerClassified(worker, gpu_class), now)
    assert d.rates.estimate("new-h100", CTX) == pytest.approx(100.0)
    assert d.rates.estimate("new-t4", CTX) == pytest.approx(10.0)
    mean = d.rates.estimate("unnamed", CTX)
    assert mean is not None and 10.0 < mean < 100.0  # no class: the run's mean speed


def test_classifying_an_unknown_or_departed_worker_changes_nothing() -> None:
    d = Dispatcher()
    assert d.handle(WorkerClassified("ghost", "h100"), 0.0) == []
    d.handle(WorkerJoined("w"), 0.0)
    d.handle(WorkerLeft("w"), 1.0)
    assert d.handle(WorkerClassified("w", "h100"), 2.0) == []
