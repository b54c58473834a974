"""The driver's settings and its one error, apart from the driver so that front ends can
name them without reading the driver."""

from __future__ import annotations

from dataclasses import dataclass


class RunAborted(RuntimeError):
    """The run cannot make progress; the message says why."""


@dataclass(frozen=True, slots=True)
class DriverConfig:
    membership_poll: float = 0.5  # seconds between looks at the scheduler's worker list
    window: int = 20_000  # items read ahead of the dispatcher
    grace_seconds: float = 60.0  # a worker's time from SIGTERM to its kill
    observe_every: float = 0.25
