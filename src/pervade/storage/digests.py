"""Content digests of artifacts and the manifests that describe cached copies.

A file's digest is the sha256 of its bytes. A folder's digest is the sha256 of one line
``"relpath\\0filedigest\\n"`` per file, in sorted walk order (folders sorted, then files
sorted within each folder), so the same bytes under another path have the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str  # relative to the artifact's root, with "/" separators
    size: int
    sha256: str
    mtime_ns: int = 0  # of the cached copy when it arrived: the cheap check compares it


@dataclass(frozen=True, slots=True)
class Manifest:
    """`<cache>/<digest>.json`: what a complete cache entry holds."""

    digest: str
    kind: str  # "file" or "folder"
    files: tuple[FileRecord, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "files": [
                    {"path": f.path, "size": f.size, "sha256": f.sha256, "mtime_ns": f.mtime_ns}
                    for f in self.files
                ],
                "kind": self.kind,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            data: Any = json.loads(text)
            files = tuple(
                FileRecord(
                    str(f["path"]), int(f["size"]), str(f["sha256"]), int(f.get("mtime_ns", 0))
                )
                for f in data["files"]
            )
            manifest = cls(str(data["digest"]), str(data["kind"]), files)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not a valid artifact manifest ({exc!r})") from None
        if manifest.kind not in ("file", "folder"):
            raise ValueError(f"{source}: field 'kind' must be 'file' or 'folder'")
        return manifest


def list_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every file of an artifact, in digest order. A file
    artifact is the one entry (its name, itself)."""
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise FileNotFoundError(f"artifact {root} does not exist")
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder) / name
            found.append((file.relative_to(root).as_posix(), file))
    return found


def hash_file(path: Path, sink: Callable[[bytes], object] | None = None) -> str:
    """sha256 of a file; each chunk read is also passed to `sink` (a copy, say)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if sink is not None:
                sink(chunk)
    return digest.hexdigest()


def digest_files(kind: str, files: Iterable[tuple[str, str]]) -> str:
    """The artifact digest from (relative path, file sha256) pairs in digest order."""
    pairs = list(files)
    if kind == "file":
        if len(pairs) != 1:
            raise ValueError(f"a file artifact has one file, got {len(pairs)}")
        return pairs[0][1]
    listing = hashlib.sha256()
    for relative, sha in pairs:
        listing.update(f"{relative}\0{sha}\n".encode())
    return listing.hexdigest()
