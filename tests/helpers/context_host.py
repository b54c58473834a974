"""A ContextHost's reports, recorded, for the tests of the worker's context host."""

from __future__ import annotations

from typing import Any

from pervade.core import Artifact, ContextSpec, ContextState
from pervade.worker.context_host import LoadInfo

S = ContextState


class Recorder:
    """A notify callback that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, ContextState, float | None]] = []
        self.loads: list[LoadInfo] = []

    def __call__(
        self, context: str, state: ContextState, seconds: float | None, load: LoadInfo | None
    ) -> None:
        self.reports.append((context, state, seconds))
        if load is not None:
            self.loads.append(load)

    @property
    def states(self) -> list[ContextState]:
        return [state for _, state, _ in self.reports]


def spec_for(loader: str, key: str, *artifacts: Artifact) -> ContextSpec:
    return ContextSpec(f"tests.helpers.loaders:{loader}", {"key": key}, artifacts)


def with_loads(notes: Recorder) -> list[tuple[tuple[str, ContextState, float | None], Any]]:
    """Each report with the LoadInfo it carried (None without)."""
    out: list[tuple[tuple[str, ContextState, float | None], Any]] = []
    loads = iter(notes.loads)
    for report in notes.reports:
        carries = report[1] in (S.WARM, S.STAGED) and (
            report[2] is not None or report[1] is S.STAGED
        )
        out.append((report, next(loads) if carries else None))
    return out
