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
    padding in its batches) and the longest go first (a short tail). Items from a task that
    raised are run one per task so that one bad item cannot sink its neighbours again.
    """

    __slots__ = ("_solo", "_sorted")

    def __init__(self) -> None:
        self._sorted: list[ItemRef] = []
        self._solo: deque[ItemRef] = deque()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._solo)

    def add(self, items: Iterable[ItemRef]) -> None:
        items = list(items)
        if len(items) > 8:
            self._sorted.extend(items)
            self._sorted.sort(key=_cost)
        else:
            for item in items:
                bisect.insort(self._sorted, item, key=_cost)

    def add_solo(self, items: Iterable[ItemRef]) -> None:
        self._solo.extend(items)

    def take(self, count: int) -> tuple[tuple[ItemRef, ...], bool]:
        """Up to `count` items for one task, and whether they are a solo (isolation) task."""
        if self._solo:
            return (self._solo.popleft(),), True
        count = min(count, len(self._sorted))
        taken = tuple(self._sorted[-count:])
        del self._sorted[-count:]
        return taken, False

    def discard(self, ids: set[str]) -> None:
        """Drop items that got an outcome elsewhere (a late result of a requeued task)."""
        self._sorted = [i for i in self._sorted if i.id not in ids]
        self._solo = deque(i for i in self._solo if i.id not in ids)
