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
    min_task_items / max_task_items: bounds on the items of one task.
    tasks_per_slot: the dispatcher sizes tasks so that the backlog splits into about this
        many tasks per worker slot, which keeps the tail short.
    max_failures: how often one item may be in a task that raised before it is recorded as
        an error. Evictions never count.
    max_load_failures: failed context builds on one worker before that worker is no longer
        asked to build that context.
    """

    max_in_flight: int = 2
    min_task_items: int = 8
    max_task_items: int = 64
    tasks_per_slot: int = 4
    max_failures: int = 3
    max_load_failures: int = 2

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "min_task_items",
            "max_task_items",
            "tasks_per_slot",
            "max_failures",
            "max_load_failures",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"dispatch.{name} must be a positive integer, got {value!r}")
        if self.min_task_items > self.max_task_items:
            raise ConfigError(
                f"dispatch.min_task_items ({self.min_task_items}) is larger than "
                f"dispatch.max_task_items ({self.max_task_items})"
            )
