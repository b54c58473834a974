"""Which cached artifacts to evict to make room: least recently used first, never a pinned one.

Pure: the caller says what the cache holds, when each entry was last used (any clock, as
data), how much the newcomer needs, the size limit and the free disk space; the answer is
the digests to remove, or `CacheFull` when no choice of unpinned entries makes room.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from pervade.core.config import ConfigError


class Tier(Enum):
    """Where a context's state came from for one load, best first."""

    GPU = "gpu"
    HOST = "host"
    DISK = "disk"
    PEER = "peer"
    ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class CachedEntry:
    digest: str
    size: int  # bytes on disk
    last_used: float  # seconds on any clock: only the order matters
    pinned: bool = False  # in use by a live context: never evicted


class CacheFull(RuntimeError):
    """No eviction of unpinned entries makes room for an artifact."""


def choose_evictions(
    entries: Iterable[CachedEntry],
    needed: int,
    limit: int | None = None,
    free: int | None = None,
    name: str = "artifact",
) -> tuple[str, ...]:
    """Digests to evict, oldest use first, so that `needed` more bytes keep the cache within
    `limit` (None: no limit) and within `free` bytes of disk (None: not a concern).
    Evicting an entry frees its bytes both from the cache and on the disk."""
    if needed < 0:
        raise ValueError(f"needed bytes must be >= 0, got {needed}")
    if limit is not None and needed > limit:
        raise CacheFull(
            f"{name} needs {needed} bytes, more than the whole artifact cache limit of "
            f"{limit} bytes; raise the limit (PERVADE_ARTIFACT_CACHE_LIMIT)"
        )
    held = list(entries)
    used = sum(e.size for e in held)
    over_limit = 0 if limit is None else max(0, used + needed - limit)
    short_of_disk = 0 if free is None else max(0, needed - free)
    to_free = max(over_limit, short_of_disk)
    chosen: list[str] = []
    freed = 0
    for entry in sorted(held, key=lambda e: (e.last_used, e.digest)):
        if freed >= to_free:
            break
        if entry.pinned:
            continue
        chosen.append(entry.digest)
        freed += entry.size
    if freed < to_free:
        pinned = sum(e.size for e in held if e.pinned)
        where = "the cache limit" if over_limit >= short_of_disk else "the free disk space"
        raise CacheFull(
            f"{name} needs {needed} bytes: evicting every unused entry frees {freed} of the "
            f"{to_free} bytes {where} asks for ({pinned} bytes are pinned by live contexts)"
        )
    return tuple(chosen)


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str, field: str = "size") -> int:
    """Bytes from "50GB", "1.5GiB", "4096": decimal (KB, MB, GB, TB) or binary (KiB...) units."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"{field}: {text!r} is not a size; write a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 50GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])
