"""Where the bytes of an artifact missing from a cache come from.

The cache asks a `Source` how many bytes it will bring (to make room first), lets it fill
a private `.partial` directory, then verifies the result against the artifact's digest and
publishes it. The origin (a path on shared storage) is the source by default; the PEER tier
passes one that pulls from another worker into the directory it is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from pervade.core.cache_policy import Tier
from pervade.core.context import Artifact
from pervade.storage.digests import FileRecord, Manifest, hash_file, list_files

# Files copied side by side: one thread hashes about 1.5-2 GB/s, so a model's shards
# hashed one after another keep a 16 GB origin read at a quarter of a page cache's speed.
# hashlib and file I/O release the GIL, so threads are enough.
COPY_THREADS = 4
T = TypeVar("T")


class Source(Protocol):
    tier: Tier  # what a load that needed this source reports
    kind: str  # "file" or "folder", as the manifest will say
    size: int  # bytes it will write
    where: str  # for error messages

    def fill(self, partial: Path) -> list[FileRecord] | None:
        """Write the artifact's files under `partial` at their relative paths (a file
        artifact: `partial/<filename>`). Return their records when hashed on the way (the
        cache then trusts them), or None to have the cache hash what was written."""
        ...


class OriginSource:
    """Copy from the artifact's origin path, hashing while copying, files side by side."""

    tier = Tier.ORIGIN

    def __init__(self, artifact: Artifact) -> None:
        origin = Path(artifact.uri)
        if not origin.exists():
            raise FileNotFoundError(f"artifact {artifact.name!r}: {origin} does not exist")
        self.where = str(origin)
        self.kind = "file" if origin.is_file() else "folder"
        self._files = list_files(origin)
        self.size = sum(path.stat().st_size for _, path in self._files)

    def fill(self, partial: Path) -> list[FileRecord]:
        return _each_file(self._files, lambda pair: self._copy(partial, *pair))

    @staticmethod
    def _copy(partial: Path, relative: str, source: Path) -> FileRecord:
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            sha = hash_file(source, out.write)
            out.flush()
            # On disk before the manifest says so: a crash leaves no entry that looks
            # complete but holds holes.
            os.fsync(out.fileno())
        stat = target.stat()
        return FileRecord(relative, stat.st_size, sha, stat.st_mtime_ns)


class CopySource:
    """Copy a verified entry of another local cache (DISK into HOST, or HOST into DISK
    behind a load). Its manifest's digests are trusted: the entry was checked when it was
    staged, and hashing it again would cost as much as the copy. Sizes are checked, so a
    short copy is never published. `sync`: fsync each file before the manifest says it is
    complete (a disk; a tmpfs does not outlive the node anyway)."""

    def __init__(self, entry: Path, manifest: Manifest, tier: Tier, sync: bool = False) -> None:
        self.tier = tier  # the tier the bytes come from (the load reports that one)
        self.where = str(entry)
        self.kind = manifest.kind
        self.size = manifest.size
        self._entry = entry
        self._files = manifest.files
        self._sync = sync

    def fill(self, partial: Path) -> list[FileRecord]:
        return _each_file(self._files, lambda record: self._copy(partial, record))

    def _copy(self, partial: Path, record: FileRecord) -> FileRecord:
        target = partial / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._entry / record.path, target)
        if self._sync:
            _fsync(target)
        stat = target.stat()
        if stat.st_size != record.size:
            raise OSError(
                f"copy of {self._entry / record.path} has {stat.st_size} bytes, "
                f"its manifest says {record.size}"
            )
        return FileRecord(record.path, record.size, record.sha256, stat.st_mtime_ns)


def _each_file(files: Sequence[T], copy: Callable[[T], FileRecord]) -> list[FileRecord]:
    """`copy` applied to every file, up to COPY_THREADS at a time, records in files' order."""
    if len(files) <= 1:
        return [copy(f) for f in files]
    with ThreadPoolExecutor(min(COPY_THREADS, len(files)), "pervade-copy") as pool:
        return list(pool.map(copy, files))


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def records_of(partial: Path) -> list[FileRecord]:
    """Hash and sync what a source wrote under `partial`, in digest order."""
    records: list[FileRecord] = []
    for relative, file in list_files(partial):
        sha = hash_file(file)
        _fsync(file)
        stat = file.stat()
        records.append(FileRecord(relative, stat.st_size, sha, stat.st_mtime_ns))
    return records
