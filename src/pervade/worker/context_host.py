"""Materialized contexts of one worker process. Pure Python: unit-tested without Dask."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pervade.core.cache_policy import Tier
from pervade.core.context import ContextSpec
from pervade.core.residency import LiveContext, NoRoom, choose_demotions
from pervade.core.states import ContextState
from pervade.storage.cache import ArtifactCache
from pervade.worker.faults import release_memory
from pervade.worker.imports import resolve_import
from pervade.worker.residency import files_bytes, footprint
from pervade.worker.staging import Remote, StagingChain

logger = logging.getLogger(__name__)

STARTED_TASKS_KEPT = 64


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
    # Cache entries this context holds from eviction while live.
    pins: tuple[tuple[ArtifactCache, str], ...] = ()
    prefetching: bool = False  # a prefetch thread is on its way: a second one is pointless
    device_bytes: int = 0  # what the live value holds on the device (an estimate at worst)
    last_used: float = 0.0  # monotonic seconds: the least recently used is demoted first
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
        host_cache: ArtifactCache | None = None,
        remote: Remote | None = None,
        device_budget: int | None = None,
    ) -> None:
        """`cache`: the DISK tier, `host_cache`: the HOST tier (tmpfs), `remote`: peers and
        the origin-reader limit. Without caches, artifacts are read at their origin.
        `device_budget`: bytes the live contexts may hold together; a build that would
        exceed it first demotes the least valuable idle ones (None: no limit)."""
        self._notify = notify
        self.device_budget = device_budget
        self.demotions = 0
        self._report_use = report_use
        self.cache = cache
        self.host_cache = host_cache
        self.staging = StagingChain(cache, host_cache, remote)
        self._entries: dict[str, _Entry] = {}
        self._guard = threading.Lock()
        # Set when this worker has been told it will be evicted: tasks hand back what they
        # have not started instead of running it.
        self.draining = threading.Event()
        # Dask keys of the latest tasks to start here, newest last: a drain waits until Dask
        # holds each one's result. Bounded, since a worker runs only a few tasks at a time.
        self.started_tasks: deque[Hashable] = deque(maxlen=STARTED_TASKS_KEPT)

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
            try:
                yield entry.value, seconds
            finally:
                entry.last_used = time.monotonic()
                self._set(entry, ContextState.WARM, use=True)

    def drop(self, context: str) -> None:
        """Forget the live value. A context whose artifacts all stay on the node is
        reported STAGED (a rebuild skips the fetch), else ABSENT."""
        with self._guard:
            entry = self._entries.get(context)
        if entry is None:
            return
        with entry.lock:
            self._drop_locked(entry)

    def _drop_locked(self, entry: _Entry) -> None:
        entry.value = None
        entry.device_bytes = 0
        self._unpin(entry)
        staged = self._staged_tier(entry.spec)
        if staged is not None:
            self._set(entry, ContextState.STAGED, load=LoadInfo(staged))
            return
        with self._guard:
            if self._entries.get(entry.spec.id) is entry:
                del self._entries[entry.spec.id]
        self._set(entry, ContextState.ABSENT)

    def _staged_tier(self, spec: ContextSpec) -> Tier | None:
        """HOST when every artifact is in the HOST cache, DISK when all are on the node,
        else None (some would have to be fetched: the context is not staged)."""
        if not spec.artifacts or not self.staging.caches:
            return None
        if self.host_cache is not None and all(
            self.host_cache.get(a.digest) is not None for a in spec.artifacts
        ):
            return Tier.HOST
        return Tier.DISK if all(self.staging.held(a.digest) for a in spec.artifacts) else None

    def _make_room(self, entry: _Entry, needed: int) -> None:
        """Demote live contexts (least valuable first) until `needed` more bytes fit the
        device budget. When no choice is enough, every idle one goes: the build gets all
        the room there is, and says why it may not fit."""
        if self.device_budget is None:
            return
        with self._guard:
            others = [e for e in self._entries.values() if e is not entry and e.state.is_live]
        live = [
            LiveContext(
                e.spec.id,
                e.device_bytes,
                e.last_used,
                busy=e.state is ContextState.BUSY or e.lock.locked(),
            )
            for e in others
        ]
        try:
            chosen = choose_demotions(
                live, needed, self.device_budget, f"context {entry.spec.id[:12]}"
            )
        except NoRoom as exc:
            logger.warning("pervade: %s; building it anyway", exc)
            chosen = tuple(c.context for c in live if not c.busy)
        demoted = 0
        for other in others:
            # Not blocking: a context whose lock was taken since is in use, not demotable.
            if other.spec.id in chosen and other.lock.acquire(blocking=False):
                try:
                    if other.state.is_live:
                        self._drop_locked(other)
                        demoted += 1
                finally:
                    other.lock.release()
        if demoted:
            self.demotions += demoted
            release_memory()  # the dropped weights leave the device before the new ones come

    def prefetch(self, spec: ContextSpec) -> threading.Thread | None:
        """Stage the context's artifacts on this node in a background thread, without
        building it, then report STAGED with the tier they came from (FAILED, with the
        error, when staging fails). Nothing to do (None) when it is live, staged or being
        built; else the thread."""
        entry = self._entry(spec)
        # STAGED is taken at its word only while the entries are still here (the caches
        # may have evicted them since). Manifests only: this runs on the event loop.
        staged = entry.state is ContextState.STAGED and all(
            self.staging.present(a.digest) for a in spec.artifacts
        )
        with self._guard:
            if staged or entry.prefetching or entry.state.is_live or entry.state.is_building:
                return None
            entry.prefetching = True
        thread = threading.Thread(
            target=self._prefetch, args=(entry,), name=f"pervade-prefetch-{spec.id[:12]}"
        )
        thread.daemon = True  # a closing worker does not wait for a prefetch
        thread.start()
        return thread

    def _prefetch(self, entry: _Entry) -> None:
        # The entry's lock: a build asked for meanwhile waits and then finds the files here.
        with entry.lock:
            with self._guard:
                entry.prefetching = False
            if entry.state.is_live:
                return
            try:
                load = self._stage_all(entry)
            except Exception as exc:
                logger.warning("pervade: prefetch of context %s failed: %s", entry.spec.id, exc)
                entry.error = f"{type(exc).__name__}: {exc}"
                self._set(entry, ContextState.FAILED)
                return
            finally:
                self._unpin(entry)  # staged, not live: the caches may evict it again
            self._set(entry, ContextState.STAGED, load=load)

    def _ensure(self, entry: _Entry) -> float:
        if entry.state.is_live:
            return 0.0
        started = time.perf_counter()
        try:
            self._set(entry, ContextState.FETCHING)
            paths: dict[str, str] = {}
            fetched = self._stage_all(entry, paths)
            estimate = files_bytes(paths.values())
            self._make_room(entry, estimate)
            self._set(entry, ContextState.LOADING)
            loader = resolve_import(entry.spec.loader)
            entry.value = loader(**dict(entry.spec.args), **paths)
            entry.device_bytes = footprint(entry.value, estimate)
        except BaseException as exc:
            entry.value = None
            entry.error = f"{type(exc).__name__}: {exc}"
            self._unpin(entry)
            self._set(entry, ContextState.FAILED)
            raise
        seconds = time.perf_counter() - started
        entry.load_seconds = seconds
        entry.last_used = time.monotonic()
        entry.error = None
        self._set(entry, ContextState.WARM, seconds, load=fetched)
        return seconds

    def _stage_all(self, entry: _Entry, paths: dict[str, str] | None = None) -> LoadInfo:
        """Stage every artifact (pinned in `entry.pins`), their local paths into `paths`."""
        tiers: list[Tier] = []
        moved, fetching = 0, 0.0
        for artifact in entry.spec.artifacts:
            placed = self.staging.stage(artifact)
            if placed.pin is not None:
                entry.pins = (*entry.pins, placed.pin)
            if paths is not None:
                paths[artifact.name] = str(placed.path)
            tiers.append(placed.tier)
            moved += placed.bytes
            fetching += placed.seconds
        # Tier order is best first, so the worst tier is the one listed last.
        order = list(Tier)
        worst = max(tiers, key=order.index) if tiers else None
        return LoadInfo(worst, moved, fetching)

    def _unpin(self, entry: _Entry) -> None:
        for cache, digest in entry.pins:
            cache.unpin(digest)
        entry.pins = ()
