"""Items waiting for a task, per context, grouped by cost."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from pervade.core.items import ItemRef


def _cost(item: ItemRef) -> int:
    return item.cost


class Backlog:
    """Pending items of one context.

    Items are kept sorted by cost so that a task takes neighbours of similar size (little
    padding in its batches) and the longest go first (a short tail). Groups are sets of items
    that must run together and alone: the halves of a task that raised, split again until the
    item that raises is found. They go before the sorted items.
    """

    __slots__ = ("_groups", "_sorted")

    def __init__(self) -> None:
        self._sorted: list[ItemRef] = []
        self._groups: deque[tuple[ItemRef, ...]] = deque()

    def __len__(self) -> int:
        return len(self._sorted) + sum(len(g) for g in self._groups)

    def add(self, items: Iterable[ItemRef]) -> None:
        items = list(items)
        if len(items) > 8:
            # Two sorted runs: the sort merges them in linear time (requeues under churn
            # come often, and the backlog can hold a million items).
            items.sort(key=_cost)
            self._sorted.extend(items)
            self._sorted.sort(key=_cost)
        else:
            for item in items:
                bisect.insort(self._sorted, item, key=_cost)

    def add_group(self, items: tuple[ItemRef, ...]) -> None:
        if items:
            self._groups.append(items)

    def take(self, count: int) -> tuple[tuple[ItemRef, ...], bool]:
        """Items for one task, and whether they are a group (an isolation task)."""
        if self._groups:
            return self._groups.popleft(), True
        count = min(count, len(self._sorted))
        taken = tuple(self._sorted[-count:])
        del self._sorted[-count:]
        return taken, False
