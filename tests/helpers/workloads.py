"""Contexts and batch functions for cluster tests; workers import them by name."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from itertools import count
from typing import Any

from pervade import ContextPoisoned, Item, ItemError

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


def dies_once_after(
    context: dict[str, Any], items: Sequence[Item], log_dir: str, after: int, delay: float = 0.0
) -> list[Any]:
    """Like `logged`; but the first process to have completed `after` items kills itself
    (SIGKILL: no notice, no report) before its next one, once in the whole run."""
    log_path = os.path.join(log_dir, f"{os.getpid()}.log")
    out: list[Any] = []
    for item in items:
        done = 0
        if os.path.exists(log_path):
            with open(log_path) as log:
                done = sum(1 for _ in log)
        if done >= after and _first_time(log_dir, "killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        out += logged(context, [item], log_dir, delay)
    return out


def _first_time(marker_dir: str, name: str, note: str = "") -> bool:
    """True for the first caller across all processes (creates a marker file holding `note`)."""
    try:
        with open(os.path.join(marker_dir, name), "x") as marker:
            marker.write(note)
            return True
    except FileExistsError:
        return False


def breaks_context_once(
    context: dict[str, Any], items: Sequence[Item], marker_dir: str, error: str
) -> list[Any]:
    """Once in the whole run, when it meets item n=40: raise `error` ("context": the
    context is broken; "device": a sticky CUDA error; "memory": out of memory)."""
    struck = f"{context['pid']}:{context['build']}"  # which context the fault hit
    if any(item.data["n"] == 40 for item in items) and _first_time(marker_dir, error, struck):
        if error == "context":
            raise ContextPoisoned("the index went away")
        if error == "device":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return [
        {"pid": context["pid"], "build": context["build"], "n": item.data["n"]} for item in items
    ]


def memory_bound(context: dict[str, Any], items: Sequence[Item], fits: int) -> list[Any]:
    """Out of memory for batches of more than `fits` items, and for an item marked `huge`
    in any batch: it does not fit even alone."""
    if len(items) > fits or any(item.data.get("huge") for item in items):
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
    return [{"n": item.data["n"], "batch": len(items)} for item in items]
