"""Decisions: what the runtime (or the simulator) should do next."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadContext:
    worker: str
    context: str


@dataclass(frozen=True, slots=True)
class StageContext:
    """Copy this context's artifacts onto the worker's node in the background, without a
    build and without taking a task slot: its next build then loads from HOST or DISK. The
    worker reports STAGED when the copy is there (or FAILED if it could not be made)."""

    worker: str
    context: str


@dataclass(frozen=True, slots=True)
class RunTask:
    task: str
    worker: str
    context: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Forget this task: its worker is gone, its items are back in the queue, or it is the
    slower of a task and its speculative copy (whatever it still reports is dropped)."""

    task: str


@dataclass(frozen=True, slots=True)
class RequeueItems:
    """These items' attempt in `task` ended without a result; they will run again."""

    task: str
    items: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class FailItems:
    """These items used up their failure budget: record `error` as their outcome."""

    items: tuple[str, ...]
    error: str


@dataclass(frozen=True, slots=True)
class RestartWorker:
    """Start a new process for this worker (its nanny keeps the slot): the old one is
    unusable. It takes no more tasks; the new process joins as a new worker."""

    worker: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScaleAdvice:
    """How many workers the job would use well now: `workers` in all, so `change` more
    (positive: request them) or fewer (negative: release that many idle ones). Advice only:
    the runtime shows it or hands it to a cluster manager that scales."""

    workers: int
    change: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """No progress is possible (the context cannot be built on any worker)."""

    reason: str


Decision = (
    LoadContext
    | StageContext
    | RunTask
    | CancelTask
    | RequeueItems
    | FailItems
    | RestartWorker
    | ScaleAdvice
    | Abort
)
