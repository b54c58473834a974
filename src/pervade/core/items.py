"""Items as the policy and the user's batch functions see them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ItemRef:
    """What the policy knows of an item: its id and a relative size.

    `cost` is any number that grows with the work an item takes (characters of its prompt,
    say); the dispatcher groups items of similar cost into one task so that batches carry
    little padding.
    """

    id: str
    cost: int = 1


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of user input as a batch function receives it."""

    id: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ItemError:
    """Returned by a batch function in place of a result: this item failed, the rest did not.

    The error is recorded for this item alone and the item is not retried; raise instead
    when the failure may be transient.
    """

    message: str
    field: str | None = None


class ContextPoisoned(Exception):
    """Raised by a batch function when the context itself is broken (a lost connection, a
    corrupted index, a device left in a bad state), not the items: the worker drops the
    context and builds it again before its next task, and the items run again."""


@dataclass(frozen=True, slots=True)
class TaskOutputs:
    """What a batch function may return instead of a plain list, to report work done."""

    values: Sequence[Any]
    tokens: int = 0
    extra: Mapping[str, float] = field(default_factory=dict)
