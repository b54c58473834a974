"""How much device memory a worker's live contexts may take, and how much each one takes.

A worker keeps every context it built live until the next one would not fit; then
`core.residency.choose_demotions` names the least valuable ones to demote (drop the live
value, keep the files on the node: a later build is a HOST or DISK load, not a fetch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pervade.core.cache_policy import parse_size
from pervade.core.config import ConfigError

BUDGET_ENV = "PERVADE_DEVICE_MEMORY"
# What contexts may take of a GPU: the rest is for activations and KV caches of the tasks.
GPU_SHARE = 0.8
# Of a CPU-only node's RAM: the rest is for the worker, the HOST tier and the OS.
RAM_SHARE = 0.5


def configured_budget(setting: int | str | None = None) -> int | None:
    """Bytes of device memory for live contexts: `setting`, else PERVADE_DEVICE_MEMORY,
    else a share of the GPU's memory (of the RAM without a GPU). "none" keeps every
    context live (no limit)."""
    value: int | str | None = setting if setting is not None else os.environ.get(BUDGET_ENV)
    if isinstance(value, str):
        if value.strip().lower() in ("none", "unlimited"):
            return None
        value = parse_size(value, f"device memory ({BUDGET_ENV})")
    if value is not None:
        if value <= 0:
            raise ConfigError(f"device memory ({BUDGET_ENV}) must be positive, got {value}")
        return int(value)
    return _default_budget()


def _default_budget() -> int | None:
    torch = sys.modules.get("torch")  # a worker without torch has no GPU for us to size
    if torch is not None and torch.cuda.is_available():
        return int(
            torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory * GPU_SHARE
        )
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    return int(ram * RAM_SHARE)


def files_bytes(paths: Iterable[str]) -> int:
    """Bytes of the files at `paths` (files or folders): the estimate of a context's size
    before it is built, and after, when its value does not say."""
    total = 0
    for path in paths:
        root = Path(path)
        if root.is_file():
            total += root.stat().st_size
        elif root.is_dir():
            total += sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return total


def footprint(value: Any, estimate: int) -> int:
    """What `value` holds on its device: its own `device_bytes` when it reports one (an
    engine counts its weights), else the `estimate`."""
    reported = getattr(value, "device_bytes", None)
    return reported if isinstance(reported, int) and reported >= 0 else estimate
