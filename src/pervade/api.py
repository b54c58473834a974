"""The public Python API: declare a context, map a batch function over items under it.

    import pervade

    index = pervade.context("mylab.search:load_index", artifacts={"path": "/data/index"})
    for result in pervade.map("mylab.search:query", queries, context=index, workers=4):
        print(result.id, result.value)

The batch function is called on a worker as ``function(context_value, items, **options)``
with a list of `pervade.Item` and returns one value per item (or `pervade.ItemError` for an
item that failed on its own). The context is built once per worker and reused by every
task that needs it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pervade.core.config import DispatchConfig
from pervade.core.context import ContextSpec
from pervade.core.items import Item
from pervade.engines.bundled import cache_dir, resolve_model
from pervade.journal import Journal, Outcome
from pervade.runtime.artifacts import artifact
from pervade.runtime.cluster import Client, connect
from pervade.runtime.driver import Driver, DriverConfig, Observer
from pervade.runtime.inputs import InputProblem, SourceItem
from pervade.runtime.job import Job
from pervade.runtime.output import ResultSink, errors_path_for
from pervade.runtime.stats import RunStats
from pervade.worker.imports import import_path_of


@dataclass(frozen=True, slots=True)
class Result:
    """The accepted outcome of one item: a value, or the error that item alone hit."""

    id: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _path_of(function: str | Callable[..., Any]) -> str:
    return function if isinstance(function, str) else import_path_of(function)


def _batch_function(function: str | Callable[..., Any]) -> str | Callable[..., Any]:
    """Module-level functions travel by name; others (a notebook's, say) by value."""
    if isinstance(function, str):
        return function
    try:
        return import_path_of(function)
    except ImportError:
        return function


def context(
    loader: str | Callable[..., Any],
    *,
    args: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, str | Path] | None = None,
    label: str = "",
) -> ContextSpec:
    """Declare a context: ``loader(**args, **{name: local_path})`` builds it on a worker.

    `loader` is a module-level function or its import path. Artifact paths are hashed by
    content, so the same files under another path are the same context.
    """
    digests = cache_dir() / "digests.json"
    staged = tuple(artifact(name, path, digests) for name, path in (artifacts or {}).items())
    return ContextSpec(_path_of(loader), dict(args or {}), staged, label)


def llm(
    model: str = "bundled:smollm2-135m-instruct",
    *,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
) -> ContextSpec:
    """A context holding a Hugging Face transformers engine for a local model folder."""
    folder = resolve_model(model)
    name = model.removeprefix("bundled:") if model.startswith("bundled:") else folder.name
    return context(
        "pervade.engines.hf:load_engine",
        args={
            "dtype": dtype,
            "device": device,
            "batch_size": batch_size,
            "max_batch_tokens": max_batch_tokens,
        },
        artifacts={"model": folder},
        label=name,
    )


def _value(body: Mapping[str, Any]) -> Any:
    """The batch function's value from an output record: non-dict values are stored
    as ``{"id", "value"}``, dict values with the id merged in."""
    rest = {k: v for k, v in body.items() if k != "id"}
    return rest["value"] if set(rest) == {"value"} else rest


def _source(items: Iterable[Any]) -> Iterator[SourceItem | InputProblem]:
    first: dict[str, int] = {}
    for index, entry in enumerate(items, start=1):
        if isinstance(entry, Item):
            item_id, data = entry.id, entry.data
        elif isinstance(entry, tuple) and len(entry) == 2:
            item_id, data = str(entry[0]), entry[1]
        elif isinstance(entry, Mapping) and "id" in entry:
            item_id, data = str(entry["id"]), {k: v for k, v in entry.items() if k != "id"}
        else:
            yield InputProblem(
                "<items>", index, None, None, "expected Item, (id, data) or a mapping with 'id'"
            )
            continue
        if item_id in first:
            message = f"duplicate id {item_id!r} (first at item {first[item_id]}); skipped"
            yield InputProblem("<items>", index, None, "id", message)
            continue
        first[item_id] = index
        yield SourceItem(item_id, index, data, len(str(data)))


def map(
    function: str | Callable[..., Any],
    items: Iterable[Any],
    *,
    context: ContextSpec,
    options: Mapping[str, Any] | None = None,
    journal: str | Path | None = None,
    output: str | Path | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    client: Client | None = None,
    dispatch: DispatchConfig | None = None,
    observer: Observer | None = None,
    grace_seconds: float = 60.0,
) -> Iterator[Result]:
    """Run `function` over `items` under `context`, yielding results as they are accepted.

    With a `journal`, a rerun skips items that already have an outcome (they are not
    yielded again; they are in the journal and the output file). Without a `client` or a
    `scheduler`, a local cluster of `workers` processes is started and closed.
    `grace_seconds` is a worker's time from SIGTERM to its kill, as the batch system gives it.
    """
    job = Job(context, _batch_function(function), dict(options or {}), dispatch or DispatchConfig())
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pervade-")))
        journal_path = Path(journal) if journal else scratch / "journal.sqlite"
        results = Path(output) if output else scratch / "results.jsonl"
        store = Journal(journal_path, job.fingerprint("<python iterable>"))
        stack.callback(store.close)
        sink = ResultSink(results, errors_path_for(results), store)
        stack.callback(sink.close)
        if client is None:
            client = stack.enter_context(
                connect(scheduler, workers, grace_seconds=grace_seconds, preload=job.worker_modules)
            )
        config = DriverConfig(grace_seconds=grace_seconds)
        driver = Driver(client, job, store, sink, RunStats(), config, observer, "<items>")
        for batch in driver.run(_source(items)):
            for accepted in batch:
                if accepted.kind is Outcome.RESULT:
                    yield Result(accepted.item_id, _value(accepted.body))
                else:
                    yield Result(accepted.item_id, error=str(accepted.body.get("error")))
