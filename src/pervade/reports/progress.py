"""Live progress: a rich bar on a terminal, a plain line every few seconds elsewhere."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from pervade.runtime.stats import RunStats


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(stats: RunStats) -> str:
    return (
        f"{stats.items_per_second:6.1f} items/s  {stats.tokens_per_second:7.0f} tok/s  "
        f"ETA {format_duration(stats.eta_seconds)}  workers {stats.workers}  "
        f"warm {stats.live_contexts}" + (f"  errors {stats.errors}" if stats.errors else "")
    )


class ProgressView:
    """Call with RunStats as often as you like; it redraws at its own pace."""

    def __init__(self, stream: TextIO | None = None, plain_every: float = 10.0) -> None:
        self.console = Console(file=stream, highlight=False)
        self._plain_every = plain_every
        self._next_plain = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]pervade"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task("run", total=None, detail="starting workers")
        return self

    def __call__(self, stats: RunStats) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=stats.done, total=stats.total, detail=describe(stats)
            )
            return
        now = time.monotonic()
        if now >= self._next_plain:
            self._next_plain = now + self._plain_every
            total = "?" if stats.total is None else str(stats.total)
            self.console.print(
                f"[{format_duration(stats.elapsed)}] {stats.done}/{total}  {describe(stats)}"
            )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
