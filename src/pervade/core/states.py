"""States of a context on one worker."""

from enum import Enum


class ContextState(Enum):
    """Where a context stands on one worker, as the worker reports it."""

    ABSENT = "absent"
    STAGED = "staged"  # not live, but its artifacts are on this node (HOST or DISK tier)
    FETCHING = "fetching"  # artifacts are being staged locally
    LOADING = "loading"  # the loader is building the live state
    WARM = "warm"  # live and idle: a task starts at once
    BUSY = "busy"  # live and running a task
    FAILED = "failed"  # the last build raised

    @property
    def is_live(self) -> bool:
        return self in (ContextState.WARM, ContextState.BUSY)

    @property
    def is_building(self) -> bool:
        return self in (ContextState.FETCHING, ContextState.LOADING)
