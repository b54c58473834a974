"""Outcomes a running task sends ahead of its report, one message per finished slice.

A worker killed without notice takes its running task's report with it; what the task sent on
the way was accepted already, so only its last slice runs again. The report still carries
every outcome (a message can be lost), so the driver counts the seconds and tokens it was
sent, to book the report's totals less what it booked on the way.

The messages travel as Dask events through the scheduler, which keeps the last ones of each
topic (`distributed.admin.low-level-log-length`, 1000 by default): that many slices' outcomes
is what this costs the scheduler in memory.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Slice:
    task: str
    outcomes: list[tuple[str, Any]]  # (item id, value or ItemError)
    seconds: float
    tokens: int


@dataclass(slots=True)
class Sent:
    began: bool = False  # the worker said it began the task
    seconds: float = 0.0
    tokens: int = 0


class Progress:
    def __init__(self, run: str) -> None:
        self._prefix = f"pervade-{run}-"
        self._sent: dict[str, Sent] = {}

    def key(self, task: str) -> str:
        """The Dask key of `task`: unique to this run, so that the messages of another run
        on the same cluster (every subscriber gets every message) are told apart."""
        return self._prefix + task

    def read(self, message: dict[str, Any]) -> Slice | None:
        """The slice a message reports; None for another run's."""
        key = str(message.get("key", ""))
        if not key.startswith(self._prefix):
            return None
        outcomes = pickle.loads(message["outcomes"])
        return Slice(
            key[len(self._prefix) :],
            list(outcomes),
            float(message.get("seconds", 0.0)),
            int(message.get("tokens", 0)),
        )

    def booked(self, got: Slice) -> None:
        """`got` was accepted (a slice without outcomes: the task began)."""
        sent = self._sent.setdefault(got.task, Sent())
        sent.began = True
        sent.seconds += got.seconds
        sent.tokens += got.tokens

    def lost_as(self, task: str) -> str:
        """How the attempts of `task`, lost with its worker, ended: "evicted" with work done,
        "unstarted" when its worker had not said it began it (one lost right as it began may
        not have said so yet, and counts as not begun)."""
        sent = self._sent.get(task)
        return "evicted" if sent is not None and sent.began else "unstarted"

    def settle(self, task: str) -> Sent:
        """What `task` sent on the way, now that it ended (reported or lost)."""
        return self._sent.pop(task, Sent())
