"""A context built from a file artifact, for the disk cache's cluster test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pervade import Item


def read_weights(weights: str) -> dict[str, Any]:
    """The context: where the worker found the artifact, and its size."""
    return {"path": weights, "size": Path(weights).stat().st_size}


def where(context: dict[str, Any], items: Sequence[Item]) -> list[Any]:
    return [{"path": context["path"], "size": context["size"]} for _ in items]
