"""The HOST tier: a second artifact cache in the node's memory (tmpfs).

Loading a model from tmpfs skips the disk, and tmpfs outlives the worker process: a worker
restarted on the same node (a crash, `client.restart_workers`) finds its artifacts there.
It is the same `ArtifactCache` (layout, locks, pins, LRU) rooted on ``/dev/shm``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pervade.core.cache_policy import Tier, parse_size
from pervade.storage.cache import ArtifactCache

HOST_CACHE_ENV = "PERVADE_HOST_CACHE"
HOST_LIMIT_ENV = "PERVADE_HOST_CACHE_LIMIT"
# tmpfs pages are memory: by default the cache takes at most this share of the tmpfs, so
# models, workers and other users of /dev/shm keep the rest.
DEFAULT_SHARE = 0.5
# Left free on the tmpfs whatever the limit: less than the disk tier's 1 GiB, since a tmpfs
# is often a few GB in all.
HOST_MARGIN = 256 << 20


def default_host_root() -> Path:
    """`$PERVADE_HOST_CACHE`, else ``/dev/shm/pervade-<uid>/artifacts`` (per user: tmpfs
    is shared by everyone on the node)."""
    explicit = os.environ.get(HOST_CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path("/dev/shm") / f"pervade-{os.getuid()}" / "artifacts"


def host_cache(
    root: str | Path | None = None, limit: int | str | None = None
) -> ArtifactCache | None:
    """The HOST cache from explicit settings, else the environment, else the defaults;
    None when the limit is 0 (the tier is off). Raises OSError when the root cannot be
    made (no /dev/shm, say): the caller goes on without the tier."""
    where = Path(root).expanduser() if root else default_host_root()
    if limit is None:
        limit = os.environ.get(HOST_LIMIT_ENV) or None
    if isinstance(limit, str):
        limit = parse_size(limit, HOST_LIMIT_ENV)
    if limit == 0:
        return None
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    if limit is None:
        limit = max(1, int(shutil.disk_usage(where).total * DEFAULT_SHARE))
    return ArtifactCache(where, limit, margin=HOST_MARGIN, tier=Tier.HOST)
