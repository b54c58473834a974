"""The cluster side of a worker's staging chain: who holds an artifact, pulling it from
them, and the cluster-wide limit on origin readers.

Holders are found through the scheduler's metadata store: a worker that holds an artifact
complete sets ``[HOLDERS_KEY, digest, its address]``, and a worker that needs it reads
``[HOLDERS_KEY, digest]``. Entries are never removed (a worker that dies cannot): a reader
keeps only addresses the scheduler still knows, and a holder that evicted its copy since
just fails over inside `pull`.

The chain runs in a task thread; every call here runs its coroutine on the worker's event
loop (`distributed.utils.sync`) and blocks only the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed.utils import sync

from pervade.core.cache_policy import Tier
from pervade.core.config import ConfigError
from pervade.core.context import Artifact
from pervade.storage.digests import FileRecord, digest_files
from pervade.worker.peer import MANIFEST_OP, ORIGIN_READERS, Manifest, PeerError, origin_readers
from pervade.worker.peer_pull import DEFAULT_CHUNK, pull

HOLDERS_KEY = "pervade-holders"
READERS_ENV = "PERVADE_ORIGIN_READERS"
logger = logging.getLogger(__name__)


def readers_from_env(value: int | str | None = None) -> int:
    """Workers reading one artifact from its origin at once: `value`, else
    PERVADE_ORIGIN_READERS, else 1."""
    if value is None:
        value = os.environ.get(READERS_ENV) or ORIGIN_READERS
    try:
        readers = int(value)
    except ValueError:
        readers = 0
    if readers < 1:
        raise ConfigError(f"{READERS_ENV}: {value!r} is not a whole number >= 1")
    return readers


class PeerSource:
    """A `Source` that pulls an artifact from peer workers into the cache's partial
    directory. The manifest, fetched first, gives the size (to make room) and the records
    returned: `pull` checks every file's sha256 against it, so the cache hashes nothing."""

    tier = Tier.PEER

    def __init__(
        self, remote: DaskRemote, artifact: Artifact, holders: list[str], manifest: Manifest
    ) -> None:
        self._remote = remote
        self._digest = artifact.digest
        self._holders = holders
        self._manifest = manifest
        self.kind = manifest.kind
        self.size = sum(f.size for f in manifest.files)
        self.where = f"peers {', '.join(holders)}"

    def fill(self, partial: Path) -> list[FileRecord]:
        remote = self._remote
        worker = remote.worker
        stats = sync(
            worker.loop,
            pull,
            self._holders,
            self._digest,
            partial,
            chunk=remote.chunk,
            timeout=remote.timeout,
            pool=worker.rpc,
        )
        logger.info(
            "pervade: pulled %s (%d bytes) from %s in %.2fs",
            self._digest,
            stats.bytes,
            ", ".join(stats.sources),
            stats.seconds,
        )
        records: list[FileRecord] = []
        for entry in self._manifest.files:
            file = partial / entry.path
            fd = os.open(file, os.O_RDONLY)
            try:
                # On disk before the manifest says so, as for an origin copy.
                os.fsync(fd)
                size, mtime = os.fstat(fd).st_size, os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
            if size != entry.size:
                raise PeerError(f"{file} has {size} bytes after the pull, not {entry.size}")
            records.append(FileRecord(entry.path, entry.size, entry.sha256, mtime))
        return records


class DaskRemote:
    """`pervade.worker.staging.Remote` on a Dask worker."""

    def __init__(
        self,
        worker: Any,
        origin_readers: int | str | None = None,
        timeout: float = 30.0,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        self.worker = worker
        self.readers = readers_from_env(origin_readers)
        self.timeout = timeout
        self.chunk = chunk
        self._published: set[str] = set()
        self._semaphores: dict[str, Any] = {}
        self._lock = threading.Lock()  # tasks and prefetch threads share one semaphore

    def _run(self, coroutine: Any, *args: Any, **kwargs: Any) -> Any:
        return sync(self.worker.loop, coroutine, *args, **kwargs)

    def holders(self, digest: str) -> list[str]:
        scheduler = self.worker.scheduler
        me = str(self.worker.address)

        async def look() -> list[str]:
            found = await scheduler.get_metadata(keys=[HOLDERS_KEY, digest], default=None)
            if not isinstance(found, dict) or not found:
                return []
            alive = await scheduler.ncores(workers=list(found))
            # Most recent first: the likeliest to still hold it (pull ranks by load anyway).
            ranked = sorted(found.items(), key=lambda kv: -float(kv[1] or 0))
            return [a for a, _ in ranked if a in alive and a != me]

        result: list[str] = self._run(look)
        return result

    def peer_source(self, artifact: Artifact, holders: list[str]) -> PeerSource:
        """The source, once a holder sends a manifest that has the artifact's digest."""
        problems: list[str] = []
        for holder in holders:
            try:
                data = self._run(self._manifest_of, holder, artifact.digest)
                if data is None:
                    problems.append(f"{holder}: does not hold it")
                    continue
                manifest = Manifest.from_json(data, artifact.digest)
            except Exception as exc:
                problems.append(f"{holder}: {type(exc).__name__}: {exc}")
                continue
            got = digest_files(manifest.kind, ((f.path, f.sha256) for f in manifest.files))
            if got != artifact.digest:
                problems.append(f"{holder}: its manifest has digest {got}")
                continue
            return PeerSource(self, artifact, holders, manifest)
        raise PeerError(
            f"no peer sent a manifest of artifact {artifact.name!r} ({artifact.digest}): "
            + "; ".join(problems)
        )

    async def _manifest_of(self, holder: str, digest: str) -> Any:
        call = getattr(self.worker.rpc(holder), MANIFEST_OP)(digest=digest)
        return await asyncio.wait_for(call, self.timeout)

    @contextlib.contextmanager
    def origin_lease(self, digest: str) -> Iterator[None]:
        # One limit per artifact: a second reader of the same files would only double what
        # the origin serves (the first one's copy reaches everyone through peers), while
        # different artifacts (several models) are read side by side.
        with self._lock:
            semaphore = self._semaphores.get(digest)
            if semaphore is None:
                semaphore = self._semaphores[digest] = origin_readers(
                    scope=digest,
                    max_leases=self.readers,
                    scheduler_rpc=self.worker.scheduler,
                    loop=self.worker.loop,
                )
        semaphore.acquire()
        try:
            yield
        finally:
            # A release that fails (the scheduler went away) must not hide the load's own
            # error; the scheduler frees a lease it no longer hears about after a timeout.
            try:
                semaphore.release()
            except Exception as exc:
                logger.warning("pervade: releasing an origin reader lease failed: %s", exc)

    def publish(self, digest: str) -> None:
        if digest in self._published:
            return
        scheduler = self.worker.scheduler
        keys = [HOLDERS_KEY, digest, str(self.worker.address)]

        async def tell() -> None:
            await scheduler.set_metadata(keys=keys, value=time.time())

        self._run(tell)
        self._published.add(digest)
