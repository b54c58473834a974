"""A worker node's local disk cache of artifacts, content-addressed by digest.

Layout under the root (other components, peer transfer among them, read it directly):

    <root>/<digest>/...          the artifact's files at their relative paths
                                 (a single-file artifact: <root>/<digest>/<filename>)
    <root>/<digest>.json         its manifest (`Manifest`), written last: it marks the
                                 entry complete, and its mtime is the entry's last use
    <root>/.partial/<digest>-*   copies in progress, renamed into place when verified
    <root>/.locks/<digest>.fetch held exclusively while the entry is fetched or evicted
    <root>/.locks/<digest>.pin   held shared while a context uses the entry
    <root>/.forms/<digest>-*     what engines derived from the entry (a model converted to
                                 its device's dtype); removed with the entry

Several worker processes of one node may share a root: the lock files (fcntl.flock) keep
them from fetching one artifact twice or evicting what another one uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pervade.core.cache_policy import CachedEntry, Tier, choose_evictions, parse_size
from pervade.core.context import Artifact
from pervade.storage.digests import FileRecord, Manifest, digest_files, hash_file
from pervade.storage.sources import OriginSource, Source, records_of

CACHE_ENV = "PERVADE_ARTIFACT_CACHE"
LIMIT_ENV = "PERVADE_ARTIFACT_CACHE_LIMIT"
_DIGEST = re.compile(r"[0-9a-f]{64}")

# What `stage` fetches from on a miss: a Source, or a callable that makes one. A callable is
# called only on a miss, under the entry's fetch lock, so a source that looks around (for
# peers that hold the artifact) looks after the wait, not before it.
SourceOrFactory = Source | Callable[[], Source]


FORMS_DIR = ".forms"  # see the layout above


class ArtifactMismatch(RuntimeError):
    """The bytes at an artifact's origin do not have the digest the job expects."""


def is_digest(text: str) -> bool:
    """Only sha256 hex digests name cache entries (a digest becomes a path)."""
    return _DIGEST.fullmatch(text) is not None


def default_root() -> Path:
    """`$PERVADE_ARTIFACT_CACHE`, else `artifacts` in pervade's cache directory."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("PERVADE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pervade"
    )
    return Path(base) / "artifacts"


@dataclass(frozen=True, slots=True)
class Staged:
    """A local copy of an artifact and what it cost to get it there."""

    path: Path
    tier: Tier  # the cache's tier (DISK, HOST) if it was cached; else its source's tier
    bytes: int  # bytes moved (0 on a hit)
    seconds: float


class ArtifactCache:
    def __init__(
        self,
        root: Path,
        limit: int | None = None,
        margin: int = 1 << 30,
        tier: Tier = Tier.DISK,
    ) -> None:
        """`limit`: bytes the entries may hold (None: no limit); `margin`: disk space
        always left free, so a full cache evicts before a copy fails for want of space;
        `tier`: what a hit reports (DISK for a local disk, HOST for tmpfs)."""
        if limit is not None and limit <= 0:
            raise ValueError(f"artifact cache limit must be positive, got {limit}")
        self.root = root
        self.limit = limit
        self.margin = margin
        self.tier = tier
        self._partial = root / ".partial"
        self._locks = root / ".locks"
        self._partial.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
        self._pin_fds: dict[str, int] = {}
        self.clean()

    @classmethod
    def configured(
        cls, root: str | Path | None = None, limit: int | str | None = None
    ) -> ArtifactCache:
        """A cache from explicit settings, else from the environment, else the defaults."""
        where = Path(root).expanduser() if root else default_root()
        if limit is None:
            limit = os.environ.get(LIMIT_ENV) or None
        if isinstance(limit, str):
            limit = parse_size(limit, LIMIT_ENV)
        return cls(where, limit)

    # -- paths -----------------------------------------------------------------------

    def manifest_path(self, digest: str) -> Path:
        return self.root / f"{digest}.json"

    def entry_path(self, digest: str) -> Path:
        return self.root / digest

    def _local(self, manifest: Manifest) -> Path:
        entry = self.entry_path(manifest.digest)
        return entry / manifest.files[0].path if manifest.kind == "file" else entry

    # -- looking up ------------------------------------------------------------------

    def get(self, digest: str) -> Path | None:
        """The verified local path of a complete entry, or None (absent, partial, corrupt)."""
        manifest = self._verified(digest)
        if manifest is None:
            return None
        self._touch(digest)
        return self._local(manifest)

    def manifest(self, digest: str) -> Manifest | None:
        """The manifest of a complete entry, unchecked (`get` checks the files)."""
        return self._manifest(digest)

    def _manifest(self, digest: str) -> Manifest | None:
        path = self.manifest_path(digest)
        try:
            manifest = Manifest.from_json(path.read_text(), str(path))
        except (OSError, ValueError):
            return None
        return manifest if manifest.digest == digest else None

    def _verified(self, digest: str) -> Manifest | None:
        """The manifest when every file is as it arrived: size and mtime alone when they
        match (cheap), the full sha256 when the mtime moved (the bytes may have changed)."""
        manifest = self._manifest(digest)
        if manifest is None:
            return None
        entry = self.entry_path(digest)
        renewed: list[FileRecord] = []
        for record in manifest.files:
            file = entry / record.path
            try:
                stat = file.stat()
            except OSError:
                return None
            if stat.st_size != record.size:
                return None
            if stat.st_mtime_ns != record.mtime_ns:
                if hash_file(file) != record.sha256:
                    return None
                record = FileRecord(record.path, record.size, record.sha256, stat.st_mtime_ns)
            renewed.append(record)
        if tuple(renewed) != manifest.files:
            # Touched but intact: remember the new mtimes so the next check is cheap again.
            manifest = Manifest(digest, manifest.kind, tuple(renewed))
            with contextlib.suppress(OSError):  # only saves a re-hash next time
                self._write_manifest(manifest)
        return manifest

    def _touch(self, digest: str) -> None:
        with contextlib.suppress(OSError):  # evicted meanwhile: the use still holds its files
            os.utime(self.manifest_path(digest))

    # -- staging ---------------------------------------------------------------------

    def stage(self, artifact: Artifact, source: SourceOrFactory | None = None) -> Staged:
        """A verified local copy of `artifact`, pinned until `unpin(artifact.digest)`:
        the cached one, else one fetched from `source` (by default its origin); a corrupt
        entry is replaced. A failed fetch leaves nothing behind but the error."""
        digest = artifact.digest
        if not is_digest(digest):
            raise ValueError(f"artifact {artifact.name!r}: digest {digest!r} is not sha256 hex")
        started = time.perf_counter()
        self.pin(digest)
        try:
            found = self.get(digest)
            if found is not None:
                return Staged(found, self.tier, 0, time.perf_counter() - started)
            with self._guard:
                local = self._fetching.setdefault(digest, threading.Lock())
            # One fetch per digest: threads of this process wait on `local`, other processes
            # on the fetch lock; whoever comes second finds the entry complete.
            with local, self._flock(self._locks / f"{digest}.fetch", fcntl.LOCK_EX):
                found = self.get(digest)
                if found is not None:
                    return Staged(found, self.tier, 0, time.perf_counter() - started)
                self._remove(digest)  # partial or corrupt
                if source is None:
                    chosen: Source = OriginSource(artifact)
                elif callable(source):
                    chosen = source()
                else:
                    chosen = source
                moved = self._fetch(artifact, chosen)
                self._touch(digest)
                found = self._local(self._manifest_or_fail(digest))
                return Staged(found, chosen.tier, moved, time.perf_counter() - started)
        except BaseException:
            self.unpin(digest)
            raise

    def _manifest_or_fail(self, digest: str) -> Manifest:
        manifest = self._manifest(digest)
        if manifest is None:
            raise RuntimeError(f"{self.manifest_path(digest)} vanished right after its fetch")
        return manifest

    def _fetch(self, artifact: Artifact, source: Source) -> int:
        """Fill `.partial` from `source`; publish it if the digest matches. Bytes written."""
        self.make_room(source.size, f"artifact {artifact.name!r} ({source.where})")
        partial = self._partial / f"{artifact.digest}-{secrets.token_hex(4)}"
        try:
            partial.mkdir()
            records = source.fill(partial)
            if records is None:
                records = records_of(partial)
            got = digest_files(source.kind, ((r.path, r.sha256) for r in records))
            if got != artifact.digest:
                raise ArtifactMismatch(
                    f"artifact {artifact.name!r} from {source.where}: its content digest is "
                    f"{got}, the job expects {artifact.digest} (did it change after the job "
                    "started?)"
                )
            os.rename(partial, self.entry_path(artifact.digest))
            self._write_manifest(Manifest(artifact.digest, source.kind, tuple(records)))
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return sum(r.size for r in records)

    def _write_manifest(self, manifest: Manifest) -> None:
        scratch = self._partial / f"{manifest.digest}-{secrets.token_hex(4)}.json"
        scratch.write_text(manifest.to_json())
        os.replace(scratch, self.manifest_path(manifest.digest))

    # -- pins ------------------------------------------------------------------------

    def pin(self, digest: str) -> None:
        """Keep an entry from eviction, by this process and others on the node."""
        with self._guard:
            self._pins[digest] += 1
            if self._pins[digest] == 1:
                fd = os.open(self._locks / f"{digest}.pin", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_SH)
                self._pin_fds[digest] = fd

    def unpin(self, digest: str) -> None:
        with self._guard:
            if self._pins[digest] <= 0:
                return
            self._pins[digest] -= 1
            if self._pins[digest] == 0:
                del self._pins[digest]
                os.close(self._pin_fds.pop(digest))

    def pinned(self) -> set[str]:
        with self._guard:
            return set(self._pins)

    # -- room ------------------------------------------------------------------------

    def entries(self) -> list[CachedEntry]:
        pinned = self.pinned()
        found: list[CachedEntry] = []
        for path in self.root.glob("*.json"):
            digest = path.stem
            manifest = self._manifest(digest)
            if manifest is None:
                continue
            with contextlib.suppress(OSError):
                used = path.stat().st_mtime
                found.append(CachedEntry(digest, manifest.size, used, digest in pinned))
        return found

    def make_room(self, needed: int, name: str = "artifact") -> list[str]:
        """Evict least recently used entries until `needed` bytes fit under the limit and
        on the disk; the digests evicted. Raises CacheFull when that is impossible."""
        busy: set[str] = set()
        evicted: list[str] = []
        while True:
            entries = [
                CachedEntry(e.digest, e.size, e.last_used, e.pinned or e.digest in busy)
                for e in self.entries()
            ]
            free = shutil.disk_usage(self.root).free - self.margin
            chosen = choose_evictions(entries, needed, self.limit, max(free, 0), name)
            if not chosen:
                return evicted
            for digest in chosen:
                if self._evict(digest):
                    evicted.append(digest)
                else:
                    busy.add(digest)  # in use by another process: choose again without it

    def _evict(self, digest: str) -> bool:
        with self._guard:
            if digest in self._pins:
                return False
            lock = self._fetching.setdefault(digest, threading.Lock())
        if not lock.acquire(blocking=False):
            return False
        try:
            with (
                self._flock(self._locks / f"{digest}.fetch", fcntl.LOCK_EX | fcntl.LOCK_NB),
                self._flock(self._locks / f"{digest}.pin", fcntl.LOCK_EX | fcntl.LOCK_NB),
            ):
                self._remove(digest)
                return True
        except BlockingIOError:
            return False
        finally:
            lock.release()

    def _remove(self, digest: str) -> None:
        # The manifest goes first: from then on the entry is incomplete to every reader.
        self.manifest_path(digest).unlink(missing_ok=True)
        shutil.rmtree(self.entry_path(digest), ignore_errors=True)
        for derived in (self.root / FORMS_DIR).glob(f"{digest}-*"):
            shutil.rmtree(derived, ignore_errors=True)

    def clean(self) -> None:
        """Remove copies left in `.partial` and entries without a manifest by processes
        that died, unless another process is fetching that digest right now."""
        leftovers = [(p.name.split("-")[0], p) for p in self._partial.iterdir()]
        leftovers += [
            (p.name, p)
            for p in self.root.iterdir()
            if is_digest(p.name) and p.is_dir() and not self.manifest_path(p.name).exists()
        ]
        for digest, path in leftovers:
            try:
                with self._flock(self._locks / f"{digest}.fetch", fcntl.LOCK_EX | fcntl.LOCK_NB):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
            except BlockingIOError:
                continue

    @contextlib.contextmanager
    def _flock(self, path: Path, mode: int) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock
