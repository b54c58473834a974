"""Serving cached artifacts to peer workers over Dask's comm layer (the PEER tier).

A worker that holds an artifact complete in its local cache serves its manifest and byte
ranges of its files through comm handlers registered by `PeerPlugin`; another worker pulls
them with `pervade.worker.peer_pull.pull`. The cache layout served is the DISK tier's: a
complete entry is the directory ``<root>/<digest>/`` with the files at their relative paths,
and the manifest ``<root>/<digest>.json`` is written last. The server only needs a
`locate(digest) -> Path | None` callable that names the entry directory of a complete entry.

Reading from ORIGIN (shared storage) is throttled cluster-wide by `origin_readers`, so N
workers starting together read the origin about once and then copy from each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from distributed import Semaphore, WorkerPlugin
from distributed.protocol.serialize import to_serialize

from pervade.core.config import ConfigError

PLUGIN_NAME = "pervade-peer"
MANIFEST_OP = "pervade_peer_manifest"
CHUNK_OP = "pervade_peer_chunk"
LOAD_OP = "pervade_peer_load"
DONE_OP = "pervade_peer_done"

Locate = Callable[[str], Path | None]

# Digests name directories: a digest with a separator or a dot could escape the cache root.
_DIGEST = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class PeerError(Exception):
    """A peer cannot serve what was asked (not held, bad path, short read)."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative, POSIX separators
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    kind: str
    files: tuple[FileEntry, ...]

    @classmethod
    def from_json(cls, data: Any, digest: str) -> Manifest:
        """Validate a manifest as read from disk or received from a peer."""
        if not isinstance(data, dict) or data.get("digest") != digest:
            raise PeerError(f"manifest of {digest} names another digest or is not an object")
        files = data.get("files")
        if data.get("kind") not in ("file", "folder") or not isinstance(files, list | tuple):
            raise PeerError(f"manifest of {digest} has no valid 'kind' and 'files'")
        entries = []
        for f in files:
            if not isinstance(f, dict):
                raise PeerError(f"manifest of {digest}: file entry {f!r} is not an object")
            path, size, sha = f.get("path"), f.get("size"), f.get("sha256")
            if not isinstance(size, int) or size < 0 or not isinstance(sha, str):
                raise PeerError(f"manifest of {digest}: bad size or sha256 in {f!r}")
            entries.append(FileEntry(safe_relpath(path, digest), size, sha.lower()))
        if len({e.path for e in entries}) != len(entries):
            raise PeerError(f"manifest of {digest} lists a path twice")
        return cls(digest, str(data["kind"]), tuple(entries))

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "kind": self.kind,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def safe_relpath(path: object, digest: str) -> str:
    """`path` if it stays inside an entry directory; a manifest must not write elsewhere."""
    if not isinstance(path, str) or not path:
        raise PeerError(f"manifest of {digest}: file path {path!r} is not a string")
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\\" in path:
        raise PeerError(f"manifest of {digest}: file path {path!r} leaves the entry directory")
    return str(p)


def check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise PeerError(f"not a digest: {digest!r}")
    return digest


def locate_in(root: Path) -> Locate:
    """The `locate` of a cache directory in the DISK tier's layout."""

    def locate(digest: str) -> Path | None:
        entry = root / digest
        return entry if (root / f"{digest}.json").is_file() and entry.is_dir() else None

    return locate


def locate_first(*locates: Locate) -> Locate:
    """The first entry any of `locates` finds (the HOST cache, then DISK)."""

    def locate(digest: str) -> Path | None:
        for one in locates:
            found = one(digest)
            if found is not None:
                return found
        return None

    return locate


@dataclass(slots=True)
class _Held:
    entry: Path
    manifest: Manifest
    sizes: dict[str, int] = field(default_factory=dict)


class _Buffers:
    """Chunk buffers used again once the comm has sent them.

    A fresh 8 MiB buffer costs page faults on every chunk, and under the
    ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny sets for its workers glibc hands
    every one back to the kernel: that alone capped serving near 1 GB/s. A buffer is free
    again when nothing but this pool refers to it: every memoryview of it (the reply frame
    being written) holds a reference, so a buffer still being sent is never reused.
    """

    def __init__(self, keep: int = 16) -> None:
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()  # reads run in threads

    def take(self, length: int) -> memoryview:
        with self._lock:
            for buf in self._free:
                # 3: the list, the loop variable and getrefcount's own argument.
                if len(buf) >= length and sys.getrefcount(buf) == 3:
                    return memoryview(buf)[:length]
            buf = bytearray(length)
            if len(self._free) < self._keep:
                self._free.append(buf)
            return memoryview(buf)


class PeerServer:
    """What a worker serves to its peers, without Dask (the handlers wrap it).

    Load is counted in pulls: a pull is active from its first request until it says it is
    done or has been silent for `idle` seconds (a puller that died never says so).
    """

    def __init__(
        self, locate: Locate, idle: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._locate = locate
        self._idle = idle
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._buffers = _Buffers()
        self._pulls: dict[str, float] = {}  # pull id -> last request
        self.reading = 0
        self.bytes_served = 0
        self.chunks_served = 0

    def _touch(self, pull_id: str | None) -> None:
        if pull_id:
            self._pulls[pull_id] = self._clock()

    def held(self, digest: str) -> _Held | None:
        check_digest(digest)
        entry = self._locate(digest)
        if entry is None:
            # The cache may have evicted it; forget what we knew.
            self._held.pop(digest, None)
            return None
        held = self._held.get(digest)
        if held is None or held.entry != entry:
            manifest_path = entry.parent / f"{digest}.json"
            manifest = Manifest.from_json(json.loads(manifest_path.read_text()), digest)
            held = _Held(entry, manifest, {f.path: f.size for f in manifest.files})
            self._held[digest] = held
        return held

    def manifest(self, digest: str, pull_id: str | None = None) -> dict[str, Any] | None:
        self._touch(pull_id)
        held = self.held(digest)
        return None if held is None else held.manifest.to_json()

    def read(self, digest: str, path: str, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset+length) of one file, read once into a fresh buffer."""
        held = self.held(digest)
        if held is None:
            raise PeerError(f"this worker does not hold {digest}")
        size = held.sizes.get(path)
        if size is None:
            raise PeerError(f"{path!r} is not a file of {digest}")
        if offset < 0 or length <= 0 or offset + length > size:
            raise PeerError(f"range {offset}+{length} is outside {path!r} ({size} bytes)")
        view = self._buffers.take(length)
        fd = os.open(held.entry / path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
        if got != length:
            raise PeerError(f"{path!r} of {digest} is shorter on disk than its manifest says")
        return view

    async def chunk(
        self, digest: str, path: str, offset: int, length: int, pull_id: str | None = None
    ) -> memoryview:
        self._touch(pull_id)
        self.reading += 1
        try:
            # In a thread: a cold disk must not stall the worker's event loop (heartbeats).
            data = await asyncio.to_thread(self.read, digest, path, offset, length)
        finally:
            self.reading -= 1
        self.bytes_served += length
        self.chunks_served += 1
        return data

    def done(self, pull_id: str) -> None:
        self._pulls.pop(pull_id, None)

    def load(self) -> dict[str, int]:
        cutoff = self._clock() - self._idle
        for pull_id in [p for p, seen in self._pulls.items() if seen < cutoff]:
            del self._pulls[pull_id]
        return {
            "pulls": len(self._pulls),
            "reading": self.reading,
            "bytes_served": self.bytes_served,
            "chunks_served": self.chunks_served,
        }


class WorkerRoots:
    """Picklable `locate_for`: the cache of a worker is ``base/<worker name>``."""

    def __init__(self, base: str | Path) -> None:
        self.base = Path(base)

    def __call__(self, worker: Any) -> Locate:
        return locate_in(self.base / str(worker.name))


class PeerPlugin(WorkerPlugin):
    """Registers the peer handlers on a worker; `locate_for(worker)` gives its `locate`."""

    name = PLUGIN_NAME

    def __init__(self, locate_for: Callable[[Any], Locate], idle: float = 30.0) -> None:
        self.locate_for = locate_for
        self.idle = idle
        self.server: PeerServer | None = None

    def setup(self, worker: Any) -> None:
        self.server = register_handlers(worker, self.locate_for(worker), self.idle)

    def teardown(self, worker: Any) -> None:
        unregister_handlers(worker)


def register_handlers(worker: Any, locate: Locate, idle: float = 30.0) -> PeerServer:
    """Serve what `locate` finds to peers through `worker`'s comm handlers."""
    server = PeerServer(locate, idle=idle)

    def manifest(digest: str, pull_id: str | None = None) -> dict[str, Any] | None:
        return server.manifest(digest, pull_id)

    async def chunk(
        digest: str, path: str, offset: int, length: int, pull_id: str | None = None
    ) -> Any:
        # to_serialize sends the buffer as its own frame, without a copy into a pickle.
        return to_serialize(await server.chunk(digest, path, offset, length, pull_id))

    def load() -> dict[str, int]:
        return server.load()

    def done(pull_id: str) -> None:
        server.done(pull_id)

    worker.handlers.update({MANIFEST_OP: manifest, CHUNK_OP: chunk, LOAD_OP: load, DONE_OP: done})
    return server


def unregister_handlers(worker: Any) -> None:
    for op in (MANIFEST_OP, CHUNK_OP, LOAD_OP, DONE_OP):
        worker.handlers.pop(op, None)


ORIGIN_READERS = 1


def origin_readers(
    scope: str = "all",
    max_leases: int = ORIGIN_READERS,
    scheduler_rpc: Any = None,
    loop: Any = None,
) -> Semaphore:
    """The cluster-wide limit on workers reading ORIGIN at once.

    Rule: take a lease before reading an artifact from ORIGIN and release it once the copy is
    published in the local cache; a worker that waited then finds a PEER holder instead of
    reading the origin again. `scope` names what is limited together: ``"all"`` for the whole
    shared filesystem, or an artifact digest for one artifact. Every worker of a scope must
    use the same `max_leases` (the scheduler keeps the first one it sees). Leases of a worker
    that dies are given back by the scheduler after its lease timeout. Use it as
    ``with origin_readers(...):`` in a task or ``async with`` on the worker's event loop;
    outside a task (a background thread of the worker), pass the worker's `scheduler_rpc`
    (``worker.scheduler``) and `loop`.
    """
    if not isinstance(max_leases, int) or max_leases < 1:
        raise ConfigError(f"origin readers must be a whole number >= 1, got {max_leases!r}")
    if not _DIGEST.match(scope):
        raise ConfigError(f"origin reader scope must be a digest or a plain name, got {scope!r}")
    return Semaphore(
        max_leases=max_leases,
        name=f"pervade-origin-{scope}",
        scheduler_rpc=scheduler_rpc,
        loop=loop,
    )
