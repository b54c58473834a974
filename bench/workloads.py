"""Batch functions and loaders used by the benchmarks (imported by workers by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pervade.apps.llm import choose
from pervade.core.items import Item, TaskOutputs
from pervade.engines.hf import load_engine


def warm_imports() -> None:
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def nothing() -> None:
    """A context that costs nothing to build: for measuring pure dispatch overhead."""
    return None


def echo(_context: None, items: Sequence[Item]) -> list[Any]:
    return [item.id for item in items]


def naive_choose(
    _context: None, items: Sequence[Item], model: str, choices: Sequence[str], **engine: Any
) -> TaskOutputs:
    """The naive way: every task loads the model itself, uses it once and drops it."""
    engine_instance = load_engine(model, **engine)
    try:
        return choose(engine_instance, items, choices)
    finally:
        del engine_instance
