"""Items waiting for a task, per context, grouped by cost."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from pervade.core.items import ItemRef


class Backlog:
    """Pending items of one context.

    Items are kept by cost so that a task takes neighbours of similar size (little padding in
    its batches) and the longest go first (a short tail). They sit in one bucket per cost,
    with the costs in order: adding k items costs O(k) however long the backlog (requeues
    under churn come often, and a backlog can hold a million items). Groups are sets of items
    that must run together and alone: the halves of a task that raised, split again until the
    item that raises is found. They go before the others.
    """

    __slots__ = ("_buckets", "_costs", "_count", "_groups")

    def __init__(self) -> None:
        self._buckets: dict[int, list[ItemRef]] = {}
        self._costs: list[int] = []  # the buckets' costs, ascending
        self._count = 0  # items in buckets
        self._groups: deque[tuple[ItemRef, ...]] = deque()

    def __len__(self) -> int:
        return self._count + sum(len(g) for g in self._groups)

    def add(self, items: Iterable[ItemRef]) -> None:
        for item in items:
            bucket = self._buckets.get(item.cost)
            if bucket is None:
                bucket = self._buckets[item.cost] = []
                bisect.insort(self._costs, item.cost)
            bucket.append(item)
            self._count += 1

    def add_group(self, items: tuple[ItemRef, ...]) -> None:
        if items:
            self._groups.append(items)

    def take(self, count: int) -> tuple[tuple[ItemRef, ...], bool]:
        """Items for one task, and whether they are a group (an isolation task): the
        costliest first, neighbours in cost together."""
        if self._groups:
            return self._groups.popleft(), True
        taken: list[ItemRef] = []
        while len(taken) < count and self._costs:
            cost = self._costs[-1]
            bucket = self._buckets[cost]
            want = count - len(taken)
            taken += bucket[-want:]
            del bucket[-want:]
            if not bucket:
                del self._buckets[cost]
                self._costs.pop()
        self._count -= len(taken)
        return tuple(taken), False
