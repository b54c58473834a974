"""Pulling an artifact from peer workers: chunked, several chunks in flight, verified.

`pull` asks every source for its load, takes the least-loaded one, fetches the manifest and
then every chunk of every file, `in_flight` requests at a time, each with a timeout (a frozen
peer would otherwise hang the pull forever). Chunks are written where they belong with
`os.pwrite`; when a source dies, freezes or errs, the pull goes on from the next source with
the chunks not yet done. Each file's sha256 is computed as its bytes arrive in order and
checked against the manifest; a file that fails is fetched again from a source that did not
send it. It runs on a worker's event loop (pass ``pool=worker.rpc``) or anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.core import ConnectionPool

from pervade.core.config import ConfigError
from pervade.worker.peer import (
    CHUNK_OP,
    DONE_OP,
    LOAD_OP,
    MANIFEST_OP,
    FileEntry,
    Manifest,
    check_digest,
)

MiB = 1 << 20
DEFAULT_CHUNK = 8 * MiB

Progress = Callable[[str, int, int], None]  # (source, chunks done, chunks in all)


class PeerPullError(Exception):
    """Every source failed; the message names the digest and what each source did."""


@dataclass(frozen=True, slots=True)
class PullStats:
    digest: str
    bytes: int  # bytes received, re-fetched ones included
    seconds: float
    sources: tuple[str, ...]  # in the order they were used
    chunks: int
    refetched: int  # chunks asked for again: a source failed during them, or their file
    # failed its sha256


@dataclass(frozen=True, slots=True)
class _Chunk:
    file: int
    offset: int
    length: int


@dataclass(slots=True, eq=False)
class _File:
    entry: FileEntry
    fd: int
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0  # bytes [0, hashed) went into the hash
    # Written past `hashed`: offset -> the bytes while few are held, else their length.
    waiting: dict[int, memoryview | int] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)

    def reset(self) -> int:
        """Start the file again; the bytes it held in memory are given back."""
        held = sum(v.nbytes for v in self.waiting.values() if isinstance(v, memoryview))
        self.hasher, self.hashed = hashlib.sha256(), 0
        self.waiting.clear()
        self.sources.clear()
        return held


class _SourceFailed(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Transfer:
    def __init__(
        self, manifest: Manifest, dest: Path, chunk: int, pull_id: str, check: bool
    ) -> None:
        self.manifest, self.pull_id, self.check = manifest, pull_id, check
        self.files: list[_File] = []
        self.pending: deque[_Chunk] = deque()
        self.attempted: set[_Chunk] = set()
        self.chunks = self.done = self.refetched = self.received = 0
        self.chunk = chunk
        self.held, self.hold_limit = 0, max(64 * MiB, 8 * chunk)
        # One thread writes and one hashes (each file's hash state has a single owner), so
        # both overlap with each other and with receiving on the event loop.
        self.io = ThreadPoolExecutor(1, thread_name_prefix="pervade-peer-write")
        self.hashing = ThreadPoolExecutor(1, thread_name_prefix="pervade-peer-hash")
        for entry in manifest.files:
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self.files.append(_File(entry, fd))
            os.ftruncate(fd, entry.size)
            self.queue(len(self.files) - 1)

    def queue(self, index: int) -> None:
        size = self.files[index].entry.size
        for offset in range(0, size, self.chunk):
            self.pending.append(_Chunk(index, offset, min(self.chunk, size - offset)))
            self.chunks += 1

    def close(self) -> None:
        self.io.shutdown(wait=True)
        self.hashing.shutdown(wait=True)
        for f in self.files:
            os.close(f.fd)

    @staticmethod
    def _write(f: _File, offset: int, data: memoryview) -> None:
        view = data
        at = offset
        while view:
            n = os.pwrite(f.fd, view, at)
            view, at = view[n:], at + n

    def _hash(self, f: _File, offset: int, data: memoryview) -> None:
        """Feed a written chunk to its file's hash, in file order."""
        if offset != f.hashed:
            # Chunks a little ahead (the usual case with several in flight) are kept to be
            # hashed from memory; after a failover the gap can be long, so the rest are
            # read back from the page cache when their turn comes.
            keep = self.held + data.nbytes <= self.hold_limit
            f.waiting[offset] = data if keep else data.nbytes
            self.held += data.nbytes if keep else 0
            return
        f.hasher.update(data)
        f.hashed += data.nbytes
        while f.hashed in f.waiting:
            early = f.waiting.pop(f.hashed)
            if isinstance(early, int):
                early = memoryview(os.pread(f.fd, early, f.hashed))
            else:
                self.held -= early.nbytes
            f.hasher.update(early)
            f.hashed += early.nbytes

    async def drain(
        self, pool: Any, source: str, in_flight: int, timeout: float, progress: Progress | None
    ) -> None:
        """Fetch pending chunks from `source` until none are left or the source fails."""
        rpc = pool(source)
        loop = asyncio.get_running_loop()
        failures: list[BaseException] = []
        # Writing and hashing run behind the requests: a fetcher asks for its next chunk
        # while the last one is written and hashed, up to 2 x `in_flight` chunks behind.
        behind = asyncio.Semaphore(2 * in_flight)
        stores: set[asyncio.Future[None]] = set()

        async def store(f: _File, c: _Chunk, data: memoryview) -> None:
            try:
                await loop.run_in_executor(self.io, self._write, f, c.offset, data)
                self.done += 1
                self.received += c.length
                if progress is not None:
                    progress(source, self.done, self.chunks)
                if self.check:
                    await loop.run_in_executor(self.hashing, self._hash, f, c.offset, data)
            finally:
                behind.release()

        async def fetcher() -> None:
            while self.pending and not failures:
                c = self.pending.popleft()
                if c in self.attempted:
                    self.refetched += 1
                self.attempted.add(c)
                f = self.files[c.file]
                try:
                    reply = await asyncio.wait_for(
                        getattr(rpc, CHUNK_OP)(
                            digest=self.manifest.digest,
                            path=f.entry.path,
                            offset=c.offset,
                            length=c.length,
                            pull_id=self.pull_id,
                        ),
                        timeout,
                    )
                    data = memoryview(reply).cast("B")
                    if data.nbytes != c.length:
                        raise _SourceFailed(
                            f"sent {data.nbytes} bytes of {f.entry.path}@{c.offset}, not {c.length}"
                        )
                except Exception as exc:
                    self.pending.appendleft(c)
                    failures.append(exc)
                    return
                f.sources.add(source)
                await behind.acquire()
                stores.add(asyncio.ensure_future(store(f, c, data)))

        await asyncio.gather(*(fetcher() for _ in range(in_flight)))
        # A failed write is a local failure and propagates as it is.
        await asyncio.gather(*stores)
        if failures:
            raise _SourceFailed(_describe(failures[0]))

    def verify(self) -> list[tuple[_File, str]]:
        """Files whose bytes do not match the manifest, with the sha256 they have."""
        bad = []
        for f in self.files if self.check else ():
            got = f.hasher.hexdigest() if f.hashed == f.entry.size else "incomplete"
            if got != f.entry.sha256:
                bad.append((f, got))
        return bad


async def _call(pool: Any, source: str, op: str, timeout: float, **kwargs: Any) -> Any:
    return await asyncio.wait_for(getattr(pool(source), op)(**kwargs), timeout)


async def _rank(
    pool: Any, sources: Sequence[str], timeout: float, tried: dict[str, str]
) -> list[str]:
    """Sources that answer, least loaded first; ties keep the caller's order."""

    async def ask(source: str) -> tuple[str, Any]:
        try:
            return source, await _call(pool, source, LOAD_OP, timeout)
        except Exception as exc:
            tried[source] = f"load query failed ({_describe(exc)})"
            return source, None

    answers = await asyncio.gather(*(ask(s) for s in dict.fromkeys(sources)))
    ranked = [(s, load) for s, load in answers if isinstance(load, dict)]
    ranked.sort(key=lambda sl: (sl[1].get("pulls", 0), sl[1].get("reading", 0)))
    return [s for s, _ in ranked]


async def pull(
    sources: Sequence[str],
    digest: str,
    dest_dir: str | Path,
    *,
    chunk: int = DEFAULT_CHUNK,
    in_flight: int = 4,
    timeout: float = 30.0,
    pool: Any = None,
    connection_args: dict[str, Any] | None = None,
    progress: Progress | None = None,
    verify: bool = True,
) -> PullStats:
    """Copy artifact `digest` from one of `sources` (worker addresses) into `dest_dir`.

    `dest_dir` receives the artifact's files at their relative paths; publishing it is the
    caller's job. `timeout` bounds every request. `pool` is a Dask ConnectionPool to reuse
    (a worker's ``worker.rpc``); without one a pool is opened with `connection_args` (TLS).
    ``verify=False`` skips the sha256 checks: only for a caller that checks the files
    itself, or to measure the transfer alone (bench/peer.py).
    """
    check_digest(digest)
    if not sources:
        raise ConfigError(f"pull of {digest} needs at least one source")
    if chunk <= 0 or in_flight < 1 or timeout <= 0:
        raise ConfigError(
            f"pull needs chunk > 0, in_flight >= 1 and timeout > 0,"
            f" got {chunk}, {in_flight}, {timeout}"
        )
    start = time.monotonic()
    own_pool = pool is None
    if own_pool:
        pool = await ConnectionPool(connection_args=connection_args, timeout=timeout)
    pull_id = uuid.uuid4().hex
    tried: dict[str, str] = {}
    used: list[str] = []
    unreachable: set[str] = set()
    transfer: _Transfer | None = None
    try:
        for source in await _rank(pool, sources, timeout, tried):
            try:
                if transfer is None:
                    data = await _call(
                        pool, source, MANIFEST_OP, timeout, digest=digest, pull_id=pull_id
                    )
                    if data is None:
                        tried[source] = "does not hold it"
                        continue
                    transfer = _Transfer(
                        Manifest.from_json(data, digest), Path(dest_dir), chunk, pull_id, verify
                    )
                used.append(source)
                await transfer.drain(pool, source, in_flight, timeout, progress)
            except Exception as exc:
                if not isinstance(exc, _SourceFailed) and transfer is not None:
                    raise  # a local failure (disk full): no other source helps
                tried[source] = f"failed ({_describe(exc)})"
                unreachable.add(source)
                continue
            bad = transfer.verify()
            if not bad:
                return PullStats(
                    digest,
                    transfer.received,
                    time.monotonic() - start,
                    tuple(used),
                    transfer.chunks,
                    transfer.refetched,
                )
            culprits = set()
            for f, got in bad:
                culprits |= f.sources
                tried[source] = (
                    f"{f.entry.path} has sha256 {got}, the manifest says {f.entry.sha256}"
                    f" (bytes from {', '.join(sorted(f.sources))})"
                )
                transfer.held -= f.reset()
                transfer.queue(transfer.files.index(f))
            for s in culprits - {source}:
                tried[s] = f"sent bytes of a file that failed its sha256 ({tried[source]})"
        what = "; ".join(f"{s}: {why}" for s, why in tried.items()) or "no source answered"
        raise PeerPullError(f"could not pull artifact {digest} from any peer: {what}")
    finally:
        if transfer is not None:
            transfer.close()
        await asyncio.gather(
            # Sources that died or froze forget the pull after their idle time; waiting on
            # their answer would only delay this one.
            *(
                _call(pool, s, DONE_OP, min(timeout, 2.0), pull_id=pull_id)
                for s in used
                if s not in unreachable
            ),
            return_exceptions=True,
        )
        if own_pool:
            await pool.close()
