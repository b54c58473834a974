"""Materialized contexts of one worker process. Pure Python: unit-tested without Dask."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pervade.core.cache_policy import Tier
from pervade.core.context import Artifact, ContextSpec
from pervade.core.states import ContextState
from pervade.storage.cache import ArtifactCache, is_digest
from pervade.worker.imports import resolve_import


@dataclass(frozen=True, slots=True)
class LoadInfo:
    """Where a build's artifacts came from: the worst tier among them (None without
    artifacts), the bytes copied to get them here and the seconds that took."""

    tier: Tier | None
    bytes: int = 0
    fetch_seconds: float = 0.0


Notify = Callable[[str, ContextState, float | None, LoadInfo | None], None]


def _ignore(
    _context: str, _state: ContextState, _seconds: float | None, _load: LoadInfo | None
) -> None:
    return None


@dataclass
class _Entry:
    spec: ContextSpec
    state: ContextState = ContextState.ABSENT
    value: Any = None
    load_seconds: float | None = None
    error: str | None = None
    pins: tuple[str, ...] = ()  # cache entries this context holds from eviction while live
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

    def __init__(
        self,
        notify: Notify = _ignore,
        report_use: bool = True,
        cache: ArtifactCache | None = None,
    ) -> None:
        """Without a `cache`, artifacts are read where they are (their origin)."""
        self._notify = notify
        self._report_use = report_use
        self.cache = cache
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
        self,
        entry: _Entry,
        state: ContextState,
        seconds: float | None = None,
        use: bool = False,
        load: LoadInfo | None = None,
    ) -> None:
        entry.state = state
        if self._report_use or not use:
            self._notify(entry.spec.id, state, seconds, load)

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
                self._unpin(entry)
                self._set(entry, ContextState.ABSENT)

    def _ensure(self, entry: _Entry) -> float:
        if entry.state.is_live:
            return 0.0
        started = time.perf_counter()
        try:
            self._set(entry, ContextState.FETCHING)
            paths: dict[str, str] = {}
            tiers: list[Tier] = []
            moved, fetching = 0, 0.0
            for artifact in entry.spec.artifacts:
                path, tier, copied, seconds = self._stage(entry, artifact)
                paths[artifact.name] = path
                tiers.append(tier)
                moved += copied
                fetching += seconds
            self._set(entry, ContextState.LOADING)
            loader = resolve_import(entry.spec.loader)
            entry.value = loader(**dict(entry.spec.args), **paths)
        except BaseException as exc:
            entry.value = None
            entry.error = f"{type(exc).__name__}: {exc}"
            self._unpin(entry)
            self._set(entry, ContextState.FAILED)
            raise
        seconds = time.perf_counter() - started
        entry.load_seconds = seconds
        entry.error = None
        # Tier order is best first, so the worst tier is the one listed last.
        order = list(Tier)
        worst = max(tiers, key=order.index) if tiers else None
        self._set(entry, ContextState.WARM, seconds, load=LoadInfo(worst, moved, fetching))
        return seconds

    def _stage(self, entry: _Entry, artifact: Artifact) -> tuple[str, Tier, int, float]:
        """A local path for an artifact, its tier, the bytes copied and the seconds taken.
        Artifacts with a sha256 digest go through the cache (pinned while the context is
        live); others, and all of them on a host without a cache, are read at the origin."""
        if self.cache is None or not is_digest(artifact.digest):
            if not Path(artifact.uri).exists():
                raise FileNotFoundError(f"artifact {artifact.uri} does not exist on this worker")
            return artifact.uri, Tier.ORIGIN, 0, 0.0
        staged = self.cache.stage(artifact)
        entry.pins = (*entry.pins, artifact.digest)
        return str(staged.path), staged.tier, staged.bytes, staged.seconds

    def _unpin(self, entry: _Entry) -> None:
        if self.cache is not None:
            for digest in entry.pins:
                self.cache.unpin(digest)
        entry.pins = ()
