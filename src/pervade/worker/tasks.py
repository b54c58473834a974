"""Functions the runtime submits to workers. Each finds its worker's context host."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import get_worker

from pervade.core.context import ContextSpec
from pervade.core.items import Item, TaskOutputs
from pervade.worker.faults import Fault, classify, describe, release_memory
from pervade.worker.imports import resolve_import
from pervade.worker.plugin import context_host


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What a task sends back: one outcome per item it ran, in the items' order; the ids it
    handed back unrun (its worker is draining, or its context broke); and the ids whose
    batch raised `error`, for the dispatcher to isolate the culprit."""

    outcomes: tuple[tuple[str, Any], ...]  # (item id, value or ItemError)
    load_seconds: float  # spent building the context for this task (0 when it was warm)
    infer_seconds: float  # in batches that returned
    tokens: int
    unfinished: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    error: str = ""
    failed_seconds: float = 0.0  # in batches that raised
    restart: bool = False  # this process cannot use its device any more
    oom_splits: int = 0


# A task runs its batch function on slices of about a quarter of its items (at least this
# many, and at least a full device batch of the context when it says how large one is), so
# a worker told to leave can stop between slices and report what is done, and a slice that
# raises costs only itself.
MIN_SLICE = 8
SLICES = 4
# Each slice but the last also sends its outcomes to the driver as soon as it ends, under
# this event topic, so that a worker killed without notice loses only the slice it was in. A
# task says so when it begins, too: the driver can then tell work lost from work not begun.
SLICE_TOPIC = "pervade-slice"


def slice_size(items: int, value: Any) -> int:
    """Items per slice: a quarter of the task in whole device batches of the context
    (`value.batch_size`, an engine's rows per forward pass), so that only a task's last
    slice can leave a batch part empty."""
    batch = getattr(value, "batch_size", None)
    quarter = max(MIN_SLICE, -(-items // SLICES))
    if not isinstance(batch, int) or batch <= 0:
        return quarter
    return -(-quarter // batch) * batch


@dataclass
class _Run:
    function: Callable[..., Any]
    options: dict[str, Any]
    outcomes: list[tuple[str, Any]] = field(default_factory=list)
    tokens: int = 0
    infer_seconds: float = 0.0
    failed_seconds: float = 0.0
    oom_splits: int = 0
    sent: int = 0  # outcomes sent ahead of the report
    sent_seconds: float = 0.0
    sent_tokens: int = 0

    def send_progress(self, worker: Any, key: Any, began: bool = False) -> None:
        """Send the outcomes since the last send to the driver (none when the task `began`).
        They travel pickled: an event must be msgpack data, and values are whatever the batch
        function returned."""
        fresh = self.outcomes[self.sent :]
        if not fresh and not began:
            return
        message = {
            "key": str(key),
            "outcomes": pickle.dumps(fresh, protocol=pickle.HIGHEST_PROTOCOL),
            "seconds": self.infer_seconds - self.sent_seconds,
            "tokens": self.tokens - self.sent_tokens,
        }
        worker.log_event(SLICE_TOPIC, message)
        self.sent, self.sent_seconds, self.sent_tokens = (
            len(self.outcomes),
            self.infer_seconds,
            self.tokens,
        )

    def slice(self, value: Any, part: Sequence[Item]) -> None:
        """Run `part`; out of memory, run its halves, down to one item (which then raises)."""
        began = time.perf_counter()
        try:
            returned = self.function(value, list(part), **self.options)
        except Exception as exc:
            self.failed_seconds += time.perf_counter() - began
            if classify(exc) is not Fault.MEMORY or len(part) == 1:
                raise
            self.oom_splits += 1
            release_memory()
            half = len(part) // 2
            self.slice(value, part[:half])
            self.slice(value, part[half:])
            return
        self.infer_seconds += time.perf_counter() - began
        if isinstance(returned, TaskOutputs):
            self.tokens += returned.tokens
            returned = returned.values
        values = list(returned)
        if len(values) != len(part):
            name = getattr(self.function, "__qualname__", repr(self.function))
            raise ValueError(
                f"{name} returned {len(values)} values for {len(part)} items; "
                "it must return one value (or ItemError) per item, in order"
            )
        self.outcomes += [(item.id, v) for item, v in zip(part, values, strict=True)]


def run_task(
    spec: ContextSpec,
    function: str | Callable[..., Any],
    options: Mapping[str, Any],
    items: Sequence[Item],
) -> TaskReport:
    host = context_host()
    worker = get_worker()
    key = worker.get_current_task()
    # Recorded before the drain check: a drain that starts after this line sees the task and
    # waits for its report, and one that started before it is seen here.
    host.started_tasks.append(key)
    if host.draining.is_set():
        return TaskReport((), 0.0, 0.0, 0, tuple(item.id for item in items))
    batch_function = resolve_import(function) if isinstance(function, str) else function
    run = _Run(batch_function, dict(options))
    failed: list[str] = []
    error = ""
    fault: Fault | None = None
    stopped_at = len(items)
    run.send_progress(worker, key, began=True)
    with host.use(spec) as (value, load_seconds):
        size = slice_size(len(items), value)
        for start in range(0, len(items), size):
            # A task that waited for its context while a drain began runs nothing either.
            if host.draining.is_set():
                stopped_at = start
                break
            part = items[start : start + size]
            try:
                run.slice(value, part)
            except Exception as exc:
                done = {item_id for item_id, _ in run.outcomes}
                failed += [item.id for item in part if item.id not in done]
                error = describe(exc)
                fault = classify(exc)
                if fault in (Fault.CONTEXT, Fault.PROCESS):
                    stopped_at = start + len(part)  # a broken context runs nothing more
                    break
                # Something in this slice raised: the other slices still run.
            if start + size < len(items) and not host.draining.is_set():
                run.send_progress(worker, key)
    if fault in (Fault.CONTEXT, Fault.PROCESS):
        host.drop(spec.id)
        release_memory()
    return TaskReport(
        tuple(run.outcomes),
        load_seconds,
        run.infer_seconds,
        run.tokens,
        unfinished=tuple(item.id for item in items[stopped_at:]),
        failed=tuple(failed),
        error=error,
        failed_seconds=run.failed_seconds,
        restart=fault is Fault.PROCESS,
        oom_splits=run.oom_splits,
    )


def load_context(spec: ContextSpec) -> float:
    """Build `spec` on this worker ahead of its tasks; the seconds it took."""
    return context_host().load(spec)


def live_contexts(dask_worker: Any) -> list[str]:
    """Contexts live on a worker; run through `Client.run`, which passes `dask_worker`."""
    return context_host(dask_worker).live()


__all__ = ["TaskReport", "live_contexts", "load_context", "run_task"]
