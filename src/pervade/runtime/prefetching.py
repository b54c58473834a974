"""The driver's side of prefetches (StageContext): which are outstanding, and what a
worker's answer means to the core."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable

from distributed import Client

from pervade.core.context import ContextSpec
from pervade.core.states import ContextState
from pervade.runtime.submit import submit_stage

Key = tuple[str, str]  # (worker, context)
Answer = concurrent.futures.Future[str | None]
logger = logging.getLogger(__name__)


class Prefetches:
    """Prefetches asked for and not yet reported STAGED (or given up on)."""

    def __init__(self) -> None:
        self._asked: dict[Key, Answer] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self._asked

    def ask(
        self,
        client: Client,
        spec: ContextSpec,
        worker: str,
        answered: Callable[[tuple[Key, Answer]], None],
    ) -> None:
        """Ask `worker` to stage `spec`; `answered` is called (on another thread) with the
        key and the worker's answer, for the driver's queue."""
        key = (worker, spec.id)
        future = submit_stage(client, spec, worker)
        self._asked[key] = future
        future.add_done_callback(lambda done: answered((key, done)))

    def ended(self, key: Key) -> None:
        """The worker reported the context staged, live, gone or failed: the stage is over."""
        self._asked.pop(key, None)

    def left(self, worker: str) -> None:
        for key in [k for k in self._asked if k[0] == worker]:
            del self._asked[key]

    def answer(self, key: Key, future: Answer) -> ContextState | None:
        """What the core must hear from the worker's answer to a prefetch: None when nothing
        (a copy started, its STAGED report follows; or the answer is stale); the state the
        worker holds the context in when a copy was pointless; FAILED when it failed."""
        if self._asked.get(key) is not future:
            return None  # already reported, or its worker left
        error = future.exception()
        if error is None:
            answer = future.result()
            if answer is None:
                return None
            state = ContextState(answer)
        else:
            logger.warning("pervade: prefetch on %s failed: %r", key[0], error)
            state = ContextState.FAILED
        del self._asked[key]
        if state.is_building:
            return None  # a build is under way there: its own reports follow
        # To the core, a stage that did not happen and left nothing is a failed stage.
        return ContextState.FAILED if state is ContextState.ABSENT else state
