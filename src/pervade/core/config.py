"""Typed, validated configuration of the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """How the dispatcher sizes and places tasks.

    max_in_flight: tasks queued or running on one worker at once; 2 keeps the next batch
        ready so the device never waits for the driver.
    min_task_items / max_task_items: hard bounds on the items of one task (a worker's engine
        splits a task into device batches of its own, so a large task costs no memory).
    tasks_per_slot: the dispatcher sizes tasks so that the backlog splits into about this
        many tasks per worker slot, which keeps the tail short.
    max_failures: how often one item may be in a task that raised before it is recorded as
        an error. Evictions never count.
    max_load_failures: failed context builds on one worker before that worker is no longer
        asked to build that context.
    task_items: the user's batch size. With `adaptive` it is only where sizing starts (and
        never more than the backlog's fair share); without, every task takes exactly this
        many items (None: the backlog-share rule within min/max_task_items).
    adaptive: size each worker's tasks from its measured items/s and its GPU class's
        observed eviction hazard (Young/Daly), within the backlog's fair share.
    speculate: when the backlog is empty, idle warm workers run copies of the slowest
        outstanding tasks; the first result wins.
    prefetch: busy workers stage the artifacts of other waiting contexts in the background.
    task_overhead: seconds one task costs beyond its items (dispatch, batching, writing
        results): what adaptive sizing weighs against the work an eviction loses.
    task_quantum: items one device batch holds (an engine's rows per forward pass). Sized
        tasks are rounded up to whole multiples of it, so only the backlog's last task runs
        a part-empty batch: a batch of 40 rows costs a GPU about what one of 128 does. A
        [model] job sets it to the model's batch_size; 1 leaves sizes as they are.
    """

    max_in_flight: int = 2
    min_task_items: int = 1
    max_task_items: int = 10_000
    tasks_per_slot: int = 4
    max_failures: int = 3
    max_load_failures: int = 2
    task_items: int | None = None
    adaptive: bool = True
    speculate: bool = True
    prefetch: bool = True
    task_overhead: float = 0.5
    task_quantum: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "min_task_items",
            "max_task_items",
            "tasks_per_slot",
            "max_failures",
            "max_load_failures",
            "task_quantum",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"dispatch.{name} must be a positive integer, got {value!r}")
        if self.task_items is not None and (
            not isinstance(self.task_items, int)
            or isinstance(self.task_items, bool)
            or self.task_items < 1
        ):
            raise ConfigError(
                f"dispatch.task_items must be a positive integer, got {self.task_items!r}"
            )
        if not self.task_overhead >= 0:
            raise ConfigError(f"dispatch.task_overhead must be >= 0, got {self.task_overhead!r}")
        if self.min_task_items > self.max_task_items:
            raise ConfigError(
                f"dispatch.min_task_items ({self.min_task_items}) is larger than "
                f"dispatch.max_task_items ({self.max_task_items})"
            )
