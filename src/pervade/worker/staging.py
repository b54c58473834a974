"""The staging chain of one worker: where an artifact's bytes come from, best first.

    HOST hit  ->  DISK hit  ->  PEER (another worker's copy)  ->  ORIGIN (shared storage)

A copy fetched from a peer or the origin lands in HOST when it fits there (memory speed:
the load starts seconds sooner than after a disk write and fsync), and a thread writes the
DISK copy behind the load, for the next worker on this node once HOST is gone (a reboot,
memory pressure). A DISK hit is copied into HOST. The loader gets the HOST path when there
is one. The tier a load reports is the one its bytes came from.

Everything that needs the cluster (who holds what, pulling from peers, the cluster-wide
limit on origin readers) is behind `Remote`, so the chain runs without Dask in unit tests.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pervade.core.cache_policy import CacheFull, Tier
from pervade.core.context import Artifact
from pervade.storage.cache import ArtifactCache, ArtifactMismatch, Staged, is_digest
from pervade.storage.sources import CopySource, OriginSource, Source

logger = logging.getLogger(__name__)


class Remote(Protocol):
    """The cluster as the chain sees it (`pervade.worker.holders.DaskRemote`)."""

    def holders(self, digest: str) -> list[str]:
        """Live workers other than this one that said they hold `digest` complete."""
        ...

    def peer_source(self, artifact: Artifact, holders: list[str]) -> Source:
        """A Source that pulls `artifact` from `holders`; raises when none answers."""
        ...

    def origin_lease(self, digest: str) -> contextlib.AbstractContextManager[None]:
        """Held while reading an origin: the cluster-wide limit on origin readers."""
        ...

    def publish(self, digest: str) -> None:
        """Tell the cluster this worker holds `digest` complete (peers may pull it)."""
        ...


@dataclass(frozen=True, slots=True)
class Placed:
    """An artifact staged for a load: the path the loader gets, where its bytes came
    from, the bytes moved and the seconds taken, and the cache entry pinned for it (None
    when read at its origin)."""

    path: Path
    tier: Tier
    bytes: int
    seconds: float
    pin: tuple[ArtifactCache, str] | None


class StagingChain:
    def __init__(
        self,
        disk: ArtifactCache | None = None,
        host: ArtifactCache | None = None,
        remote: Remote | None = None,
    ) -> None:
        self.disk = disk
        self.host = host
        self.remote = remote
        self._behind: list[threading.Thread] = []  # DISK copies written behind loads

    @property
    def caches(self) -> tuple[ArtifactCache, ...]:
        """The node's caches, best first."""
        return tuple(c for c in (self.host, self.disk) if c is not None)

    def held(self, digest: str) -> bool:
        """Whether a complete, verified copy is on this node."""
        return is_digest(digest) and any(c.get(digest) is not None for c in self.caches)

    def present(self, digest: str) -> bool:
        """Whether a cache has a complete entry, by its manifest alone (no file checks)."""
        return is_digest(digest) and any(c.manifest(digest) is not None for c in self.caches)

    def stage(self, artifact: Artifact) -> Placed:
        """A local, verified copy of `artifact`, pinned in the cache named by `pin`."""
        started = time.perf_counter()
        digest = artifact.digest
        if not self.caches or not is_digest(digest):
            # Without a cache, or without a digest to name an entry: read where it is.
            origin = Path(artifact.uri)
            if not origin.exists():
                raise FileNotFoundError(f"artifact {artifact.uri} does not exist on this worker")
            return Placed(origin, Tier.ORIGIN, 0, 0.0, None)
        if self.host is not None:
            self.host.pin(digest)  # before the look: nothing evicts it between
            found = self.host.get(digest)
            if found is not None:
                self._publish(digest)
                seconds = time.perf_counter() - started
                return Placed(found, Tier.HOST, 0, seconds, (self.host, digest))
            self.host.unpin(digest)
        if self.host is not None and (self.disk is None or self.disk.get(digest) is None):
            try:
                fetched = self._fetch(self.host, artifact)
            except CacheFull:
                fetched = None  # no room in memory: land on DISK below
            if fetched is not None:
                if self.disk is not None:
                    self._write_behind(self.host, self.disk, artifact)
                seconds = time.perf_counter() - started
                pin = (self.host, digest)
                return Placed(fetched.path, fetched.tier, fetched.bytes, seconds, pin)
        landing = self.caches[-1]  # DISK, else HOST alone
        staged = self._fetch(landing, artifact)
        path, pin = staged.path, (landing, digest)
        if self.disk is not None and self.host is not None:
            copied = self._copy_to_host(self.disk, self.host, artifact, staged)
            if copied is not None:
                landing.unpin(digest)  # the load uses the HOST copy; DISK may evict its own
                path, pin = copied, (self.host, digest)
        return Placed(path, staged.tier, staged.bytes, time.perf_counter() - started, pin)

    def _fetch(self, cache: ArtifactCache, artifact: Artifact) -> Staged:
        """Stage into `cache`: a hit, else a peer's copy, else the origin under a lease.
        A worker that waited for the lease looks for peers again once it has it: the
        reader before it has published its copy meanwhile, and pulling that (outside the
        lease, so pulls run side by side) spares the origin."""
        digest = artifact.digest
        remote = self.remote
        if remote is None:
            return cache.stage(artifact)
        if cache.get(digest) is not None:
            staged = cache.stage(artifact)
            self._publish(digest)
            return staged
        for looked_again in (False, True):
            from_peer = self._from_peers(remote, cache, artifact)
            if from_peer is not None:
                self._publish(digest)
                return from_peer
            with remote.origin_lease(digest):
                if not looked_again and remote.holders(digest):
                    continue  # leaves the lease to the next origin reader
                staged = cache.stage(artifact, lambda: OriginSource(artifact))
                # Published before the lease goes: whoever takes it next finds this copy.
                self._publish(digest)
                return staged
        raise AssertionError("unreachable: the second look reads the origin")

    def _from_peers(
        self, remote: Remote, cache: ArtifactCache, artifact: Artifact
    ) -> Staged | None:
        holders = remote.holders(artifact.digest)
        if not holders:
            return None
        try:
            return cache.stage(artifact, lambda: remote.peer_source(artifact, holders))
        except CacheFull:
            raise  # no room here: the origin would not do better
        except Exception as exc:  # every peer failed, or sent other bytes
            kind = "sent other bytes" if isinstance(exc, ArtifactMismatch) else "failed"
            logger.warning(
                "pervade: pulling artifact %r from peers %s %s, trying the origin: %s",
                artifact.name,
                holders,
                kind,
                exc,
            )
            return None

    def _copy_to_host(
        self, disk: ArtifactCache, host: ArtifactCache, artifact: Artifact, staged: Staged
    ) -> Path | None:
        """The artifact copied into HOST and pinned there; None when it does not fit (or
        the copy fails): the load goes on from DISK."""
        digest = artifact.digest
        manifest = disk.manifest(digest)
        if manifest is None:
            return None
        source = CopySource(disk.entry_path(digest), manifest, staged.tier)
        try:
            return host.stage(artifact, source).path
        except (CacheFull, OSError, ArtifactMismatch) as exc:
            logger.info("pervade: artifact %r stays out of the HOST cache: %s", artifact.name, exc)
            return None

    def _write_behind(self, host: ArtifactCache, disk: ArtifactCache, artifact: Artifact) -> None:
        """Copy the HOST entry into DISK on a thread. HOST stays pinned meanwhile, so the
        entry is not evicted under the copy; a worker that dies mid-copy leaves a partial
        copy that the next cache on this root removes."""
        host.pin(artifact.digest)
        thread = threading.Thread(
            target=self._copy_to_disk,
            args=(host, disk, artifact),
            name=f"pervade-write-behind-{artifact.name}",
            daemon=True,
        )
        self._behind = [t for t in self._behind if t.is_alive()] + [thread]
        thread.start()

    @staticmethod
    def _copy_to_disk(host: ArtifactCache, disk: ArtifactCache, artifact: Artifact) -> None:
        digest = artifact.digest
        try:
            manifest = host.manifest(digest)
            if manifest is None:
                return
            source = CopySource(host.entry_path(digest), manifest, Tier.HOST, sync=True)
            disk.stage(artifact, source)
            disk.unpin(digest)
        except Exception as exc:  # the DISK copy is a spare: the load goes on from HOST
            logger.info("pervade: artifact %r stays out of the DISK cache: %s", artifact.name, exc)
        finally:
            host.unpin(digest)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the DISK copies written behind loads; whether all of them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._behind):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in self._behind)

    def _publish(self, digest: str) -> None:
        if self.remote is not None:
            with _logged(f"publishing {digest} to the cluster"):
                self.remote.publish(digest)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """A failure here costs peers a source, never the load."""
    try:
        yield
    except Exception as exc:
        logger.warning("pervade: %s failed: %s", what, exc)
