"""The workers the dispatcher knows, with indexes kept current as each one changes.

Placement asks "which workers with context C live have a free slot?" and "which workers are
idle?" after every event. Scanning a thousand workers for that, thousands of times a
minute, is what made a large pool slow to dispatch; instead every change to a worker goes
through `touch`, which moves it between the few sets it belongs to.
"""

from __future__ import annotations

from collections.abc import Iterator

from pervade.core.placement import WorkerState
from pervade.core.states import ContextState


class Roster:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._workers: dict[str, WorkerState] = {}
        self._free: dict[str, set[str]] = {}  # context -> live there, taking work, a slot free
        self._live: dict[str, set[str]] = {}  # context -> live there and taking work
        self._holders: dict[str, set[str]] = {}  # context -> live or staged there (peers)
        self._building: dict[str, set[str]] = {}  # context -> being built there
        self._member: dict[str, list[set[str]]] = {}  # worker -> the index sets it is in
        self.idle: set[str] = set()  # no task, taking work, building nothing
        self.touched: set[str] = set()  # changed since the dispatcher last looked

    # -- membership ------------------------------------------------------------------

    def add(self, worker: WorkerState) -> None:
        self._workers[worker.name] = worker
        self._member[worker.name] = []
        self.touch(worker)

    def remove(self, name: str) -> WorkerState | None:
        worker = self._workers.pop(name, None)
        for index in self._member.pop(name, []):
            index.discard(name)
        self.idle.discard(name)
        self.touched.discard(name)
        return worker

    def get(self, name: str) -> WorkerState | None:
        return self._workers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self) -> Iterator[WorkerState]:
        return iter(self._workers.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self._workers)

    # -- the indexes -----------------------------------------------------------------

    def touch(self, worker: WorkerState) -> None:
        """Re-file `worker` after any change to its tasks, contexts or standing."""
        name = worker.name
        if name not in self._workers:
            return
        for index in self._member[name]:
            index.discard(name)
        member: list[set[str]] = []
        takes = worker.takes_work
        free = takes and len(worker.tasks) < self.max_in_flight
        building = False
        for context, state in worker.contexts.items():
            if state.is_live:
                member.append(self._holders.setdefault(context, set()))
                if takes:
                    member.append(self._live.setdefault(context, set()))
                    if free:
                        member.append(self._free.setdefault(context, set()))
            elif state is ContextState.STAGED:
                member.append(self._holders.setdefault(context, set()))
            elif state.is_building:
                building = True
                member.append(self._building.setdefault(context, set()))
        for index in member:
            index.add(name)
        self._member[name] = member
        if takes and not worker.tasks and not building:
            self.idle.add(name)
        else:
            self.idle.discard(name)
        self.touched.add(name)

    def free_on(self, context: str) -> set[str]:
        return self._free.get(context, set())

    def live_on(self, context: str) -> set[str]:
        """Workers taking work with `context` live (busy or not)."""
        return self._live.get(context, set())

    def holders(self, context: str) -> set[str]:
        return self._holders.get(context, set())

    def building(self, context: str) -> set[str]:
        return self._building.get(context, set())

    def take_touched(self) -> list[WorkerState]:
        """The workers changed since the last call, in a stable order."""
        touched = [self._workers[n] for n in sorted(self.touched) if n in self._workers]
        self.touched.clear()
        return touched
