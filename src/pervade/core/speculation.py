"""Speculative copies for the tail: once a context's backlog is empty, idle warm workers run
copies of the outstanding tasks expected to finish last, and the first result wins.

In an opportunistic pool the last tasks are often on the slowest or least reliable GPUs, and
a job is only done when its last item is. A copy costs a GPU that would otherwise idle; it
is made only when it is expected to finish clearly sooner than the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pervade.core.load_costs import Throughput
from pervade.core.placement import Task

# A copy must be expected to finish at least this much sooner (share of the original's
# expected remaining time) to be worth a GPU: estimates are noisy.
MIN_GAIN = 0.2


def expected_ends(tasks: Iterable[Task], rates: Throughput, now: float) -> dict[str, float]:
    """When each task (all of one context) is expected to finish: a worker runs its tasks in
    the order they were started, each at the worker's measured speed. A task already later
    than expected is taken to need as long again as it has run (its worker may be slow or
    frozen). Tasks on a worker of unknown speed get no estimate."""
    by_worker: dict[str, list[Task]] = {}
    for task in tasks:
        by_worker.setdefault(task.worker, []).append(task)
    ends: dict[str, float] = {}
    for worker, queue in by_worker.items():
        if len(queue) > 1:
            queue.sort(key=lambda t: (t.started, t.id))
        rate = rates.estimate(worker, queue[0].context)
        if rate is None or rate <= 0:
            continue
        free_at = None
        for task in queue:
            start = task.started if free_at is None else max(task.started, free_at)
            end = start + len(task.items) / rate
            if end < now:
                end = now + (now - start)
            ends[task.id] = free_at = end
    return ends


def choose_copies(
    idle: list[str],
    outstanding: list[Task],
    ends: Mapping[str, float],
    rates: Throughput,
    now: float,
    overhead: float = 0.0,
) -> list[tuple[str, Task]]:
    """(worker, task) pairs: the idle warm workers, fastest first, each copying the task
    expected to end last among those its copy would clearly beat: sooner by MIN_GAIN of the
    original's remaining time and by more than a task's `overhead` (seconds), which the copy
    pays again. Each task once."""
    candidates = sorted((t for t in outstanding if t.id in ends), key=lambda t: (-ends[t.id], t.id))
    speed = {w: rates.estimate(w, outstanding[0].context) if outstanding else None for w in idle}
    pairs: list[tuple[str, Task]] = []
    for worker in sorted(idle, key=lambda w: (-(speed[w] or 0.0), w)):
        rate = speed[worker]
        if rate is None or rate <= 0:
            continue
        for task in candidates:
            if task.worker == worker:
                continue
            remaining = ends[task.id] - now
            gain = max(MIN_GAIN * remaining, overhead)
            if now + overhead + len(task.items) / rate < ends[task.id] - gain:
                pairs.append((worker, task))
                candidates.remove(task)
                break
    return pairs
