"""Context loaders for worker tests, resolved by import path like real loaders.

Each test passes its own `key` argument, so the call records of one test never mix with
another's.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

calls: Counter[str] = Counter()
_gates: dict[str, tuple[threading.Event, threading.Event]] = {}


def build(key: str, **kwargs: Any) -> dict[str, Any]:
    """A cheap context: counts its builds and returns what it was given."""
    calls[key] += 1
    return {"key": key, "build": calls[key], **kwargs}


def gate(key: str) -> tuple[threading.Event, threading.Event]:
    """(started, release) for `gated`: it sets `started` and waits for `release`."""
    return _gates.setdefault(key, (threading.Event(), threading.Event()))


def gated(key: str, **kwargs: Any) -> dict[str, Any]:
    """A context whose build blocks until the test releases it."""
    calls[key] += 1
    started, release = gate(key)
    started.set()
    if not release.wait(timeout=10):
        raise TimeoutError(f"loader {key!r} was never released")
    return {"key": key, "build": calls[key], **kwargs}


def broken(key: str, **kwargs: Any) -> Any:
    calls[key] += 1
    raise RuntimeError(f"cannot build {key}")
