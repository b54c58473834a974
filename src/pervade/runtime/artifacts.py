"""Content digests of artifacts (files or folders), cached by path, size and mtime."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pervade.core.context import Artifact
from pervade.storage.digests import digest_files, hash_file, list_files


def _file_digest(path: Path, cache: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    found = cache.get(key)
    if found is None:
        found = cache[key] = hash_file(path)
    return found


def digest_path(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of a file, or of a folder's (relative path, file digest) list."""
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    before = dict(cache)
    kind = "file" if path.is_file() else "folder"
    result = digest_files(
        kind, ((relative, _file_digest(file, cache)) for relative, file in list_files(path))
    )
    if cache_file is not None and cache != before:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        scratch = cache_file.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(cache))
        scratch.replace(cache_file)
    return result


def artifact(name: str, path: str | Path, cache_file: Path | None = None) -> Artifact:
    resolved = Path(path).expanduser().resolve()
    return Artifact(name, str(resolved), digest_path(resolved, cache_file))
