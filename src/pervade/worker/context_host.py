"""Materialized contexts of one worker process. Pure Python: unit-tested without Dask."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pervade.core.context import ContextSpec
from pervade.core.states import ContextState
from pervade.worker.imports import resolve_import

Notify = Callable[[str, ContextState, float | None], None]


def _ignore(_context: str, _state: ContextState, _seconds: float | None) -> None:
    return None


@dataclass
class _Entry:
    spec: ContextSpec
    state: ContextState = ContextState.ABSENT
    value: Any = None
    load_seconds: float | None = None
    error: str | None = None
    # One lock per context: it serializes the build and the use, so two tasks never drive
    # one model at once and a second task waits for the first build instead of repeating it.
    lock: threading.Lock = field(default_factory=threading.Lock)


class ContextHost:
    """Builds, holds and lends the contexts of one worker process.

    Every change of a context's state is passed to `notify`, except the warm/busy toggle
    around each task when `report_use` is false: the dispatcher knows which tasks it sent,
    and two messages per task through the scheduler would cost more than the task itself
    when tasks are short. `states()` still shows busy.
    """

    def __init__(self, notify: Notify = _ignore, report_use: bool = True) -> None:
        self._notify = notify
        self._report_use = report_use
        self._entries: dict[str, _Entry] = {}
        self._guard = threading.Lock()
        # Set when this worker has been told it will be evicted: tasks hand back what they
        # have not started instead of running it.
        self.draining = threading.Event()
        self.tasks_running = 0  # tasks inside use(): what a drain waits for

    def states(self) -> dict[str, ContextState]:
        with self._guard:
            return {cid: entry.state for cid, entry in self._entries.items()}

    def live(self) -> list[str]:
        return [cid for cid, state in self.states().items() if state.is_live]

    def _entry(self, spec: ContextSpec) -> _Entry:
        with self._guard:
            entry = self._entries.get(spec.id)
            if entry is None:
                entry = self._entries[spec.id] = _Entry(spec)
            return entry

    def _set(
        self, entry: _Entry, state: ContextState, seconds: float | None = None, use: bool = False
    ) -> None:
        entry.state = state
        if self._report_use or not use:
            self._notify(entry.spec.id, state, seconds)

    def load(self, spec: ContextSpec) -> float:
        """Build the context unless it is live; the seconds the build took (0 when live)."""
        entry = self._entry(spec)
        with entry.lock:
            if entry.state.is_live:
                # Asked to build what is live: the dispatcher lost track of it (this worker
                # re-registered after a missed heartbeat, say). Tell it again.
                self._set(entry, entry.state)
            return self._ensure(entry)

    @contextmanager
    def use(self, spec: ContextSpec) -> Iterator[tuple[Any, float]]:
        """The live value, and the seconds spent building it for this use (0 when warm)."""
        entry = self._entry(spec)
        with entry.lock:
            seconds = self._ensure(entry)
            self._set(entry, ContextState.BUSY, use=True)
            self.tasks_running += 1
            try:
                yield entry.value, seconds
            finally:
                self.tasks_running -= 1
                self._set(entry, ContextState.WARM, use=True)

    def drop(self, context: str) -> None:
        with self._guard:
            entry = self._entries.pop(context, None)
        if entry is not None:
            with entry.lock:
                entry.value = None
                self._set(entry, ContextState.ABSENT)

    def _ensure(self, entry: _Entry) -> float:
        if entry.state.is_live:
            return 0.0
        started = time.perf_counter()
        try:
            self._set(entry, ContextState.FETCHING)
            paths = {a.name: _stage(a.uri) for a in entry.spec.artifacts}
            self._set(entry, ContextState.LOADING)
            loader = resolve_import(entry.spec.loader)
            entry.value = loader(**dict(entry.spec.args), **paths)
        except BaseException as exc:
            entry.value = None
            entry.error = f"{type(exc).__name__}: {exc}"
            self._set(entry, ContextState.FAILED)
            raise
        seconds = time.perf_counter() - started
        entry.load_seconds = seconds
        entry.error = None
        self._set(entry, ContextState.WARM, seconds)
        return seconds


def _stage(uri: str) -> str:
    """A local path for an artifact. Today the origin path itself; cached tiers come later."""
    if not Path(uri).exists():
        raise FileNotFoundError(f"artifact {uri} does not exist on this worker")
    return uri
