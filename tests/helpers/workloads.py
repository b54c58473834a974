"""Contexts and batch functions for cluster tests; workers import them by name."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from itertools import count
from typing import Any

from pervade import Item, ItemError

_builds = count(1)


def process_context(tag: str = "") -> dict[str, Any]:
    """A context that records which process built it and how many builds that process did."""
    return {"pid": os.getpid(), "build": next(_builds), "tag": tag}


def describe(context: dict[str, Any], items: Sequence[Item], delay: float = 0.0) -> list[Any]:
    """One value per item naming the context that served it; `delay` seconds per item."""
    out: list[Any] = []
    for item in items:
        if delay:
            time.sleep(delay)
        if item.data.get("bad"):
            out.append(ItemError(f"item {item.id} is marked bad", field="bad"))
        else:
            out.append({"pid": context["pid"], "build": context["build"], "n": item.data["n"]})
    return out


def poisoned(context: dict[str, Any], items: Sequence[Item]) -> list[Any]:
    """Raises for the whole batch whenever an item marked `poison` is in it."""
    if any(item.data.get("poison") for item in items):
        raise ValueError("poisoned item in batch")
    return [{"n": item.data["n"]} for item in items]


def logged(
    context: dict[str, Any], items: Sequence[Item], log_dir: str, delay: float = 0.0
) -> list[Any]:
    """Like `describe`, and appends each item it completes to a file of its process, so a
    test can count how often each item was computed, whichever result was accepted."""
    out: list[Any] = []
    with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as log:
        for item in items:
            if delay:
                time.sleep(delay)
            out.append({"pid": context["pid"], "n": item.data["n"]})
            log.write(item.id + "\n")
            log.flush()
    return out
