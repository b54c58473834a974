"""A draining worker leaves only once Dask holds the report of every task it started and the
driver has collected it; a task that starts, or gets its context, after the drain began runs
nothing. Fakes stand in for the Dask worker, so each step's order is the test's to choose."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import pervade
from pervade.worker import tasks
from pervade.worker.context_host import ContextHost
from pervade.worker.eviction import EvictionPlugin
from pervade.worker.plugin import PLUGIN_NAME
from tests.helpers import loaders

KEY = "pervade-run-7"


class FakeWorker:
    """The parts of a Dask worker that a drain touches."""

    def __init__(self, host: ContextHost) -> None:
        self.address = "tcp://fake:1"
        self.plugins = {PLUGIN_NAME: SimpleNamespace(host=host)}
        self.state = SimpleNamespace(tasks={})
        self.data: dict[str, Any] = {}
        self.steps: list[str] = []
        self.scheduler = SimpleNamespace(retire_workers=self._retire)

    def log_event(self, topic: str, message: object) -> None:
        self.steps.append(f"told the driver ({topic})")

    async def _retire(self, **kwargs: Any) -> None:
        self.steps.append("retired")

    async def close(self, **kwargs: Any) -> None:
        self.steps.append("closed")

    def task_is(self, key: str, state: str) -> None:
        self.state.tasks[key] = SimpleNamespace(state=state)


async def _step(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


def test_a_drain_waits_until_dask_holds_a_returned_task_and_the_driver_has_it() -> None:
    host = ContextHost()
    worker = FakeWorker(host)
    plugin = EvictionPlugin(grace_seconds=30)
    plugin.setup(worker)

    async def scenario() -> list[str]:
        # The task's function has returned (nothing runs inside the context any more), but
        # Dask has not stored its report yet.
        host.started_tasks.append(KEY)
        worker.task_is(KEY, "executing")
        worker.task_is("pervade-run-load-abc", "executing")  # a load alone is not waited for
        plugin.start_drain()
        await _step()
        before_stored = list(worker.steps)
        worker.task_is(KEY, "memory")
        worker.data[KEY] = "report"
        await _step()
        before_collected = list(worker.steps)
        del worker.data[KEY]  # the driver has the report and lets go of it
        await _step()
        assert before_stored == before_collected == ["told the driver (pervade-drain)"]
        return worker.steps

    steps = asyncio.run(scenario())
    assert steps == ["told the driver (pervade-drain)", "retired", "closed"]
    assert host.draining.is_set()


def test_a_drain_does_not_wait_past_most_of_its_grace_period() -> None:
    host = ContextHost()
    worker = FakeWorker(host)
    plugin = EvictionPlugin(grace_seconds=0.5)
    plugin.setup(worker)

    async def scenario() -> list[str]:
        host.started_tasks.append(KEY)
        worker.task_is(KEY, "executing")  # and stays so: a task longer than the grace
        plugin.start_drain()
        await _step(0.2)
        early = list(worker.steps)
        await _step(0.6)
        assert early == ["told the driver (pervade-drain)"]
        return worker.steps

    assert asyncio.run(scenario())[1:] == ["retired", "closed"]


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContextHost]:
    """A context host that `run_task` finds as its worker's, with the task key KEY."""
    found = ContextHost()
    monkeypatch.setattr(tasks, "context_host", lambda: found)
    sent: list[tuple[str, Any]] = []
    dask_worker = SimpleNamespace(
        get_current_task=lambda: KEY, log_event=lambda *message: sent.append(message)
    )
    monkeypatch.setattr(tasks, "get_worker", lambda: dask_worker)
    found.sent = sent  # type: ignore[attr-defined]
    yield found


def _items(count: int) -> list[pervade.Item]:
    return [pervade.Item(f"i{n}", {"n": n}) for n in range(count)]


def _echo(context: Any, items: list[pervade.Item]) -> list[int]:
    return [item.data["n"] for item in items]


def test_a_task_started_after_the_drain_began_hands_every_item_back(host: ContextHost) -> None:
    host.draining.set()
    spec = pervade.context(loaders.build, args={"key": "drain-late"})
    report = tasks.run_task(spec, _echo, {}, _items(3))
    assert report.unfinished == ("i0", "i1", "i2") and report.outcomes == ()
    assert list(host.started_tasks) == [KEY]  # seen by the drain, had it still been waiting


def test_a_task_whose_context_was_built_while_a_drain_began_runs_nothing(
    host: ContextHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build_then_drain(key: str) -> dict[str, Any]:
        host.draining.set()  # SIGTERM arrives during the build
        return loaders.build(key)

    monkeypatch.setattr(loaders, "build_then_drain", build_then_drain, raising=False)
    spec = pervade.context("tests.helpers.loaders:build_then_drain", args={"key": "drain-build"})
    report = tasks.run_task(spec, _echo, {}, _items(20))
    assert report.outcomes == ()
    assert report.unfinished == tuple(f"i{n}" for n in range(20))


def test_every_slice_but_the_last_sends_its_outcomes_as_it_ends(host: ContextHost) -> None:
    spec = pervade.context(loaders.build, args={"key": "slices"})
    report = tasks.run_task(spec, _echo, {}, _items(20))  # slices of 8, 8 and 4
    sent = host.sent  # type: ignore[attr-defined]
    assert [topic for topic, _ in sent] == [tasks.SLICE_TOPIC] * 3
    outcomes = [pickle.loads(message["outcomes"]) for _, message in sent]
    # First that it began, then the first two slices.
    assert outcomes == [[], [(f"i{n}", n) for n in range(8)], [(f"i{n}", n) for n in range(8, 16)]]
    assert all(message["key"] == KEY and message["seconds"] >= 0 for _, message in sent)
    # The report still carries every outcome: a message sent on the way can be lost.
    assert report.outcomes == tuple((f"i{n}", n) for n in range(20))


def test_a_task_that_starts_draining_sends_no_slice_on_the_way(host: ContextHost) -> None:
    def echo_then_drain(context: Any, items: list[pervade.Item]) -> list[int]:
        host.draining.set()  # SIGTERM arrives during the first slice
        return _echo(context, items)

    spec = pervade.context(loaders.build, args={"key": "slices-drain"})
    report = tasks.run_task(spec, echo_then_drain, {}, _items(20))
    sent = host.sent  # type: ignore[attr-defined]
    assert [pickle.loads(message["outcomes"]) for _, message in sent] == [[]]  # it began
    assert len(report.outcomes) == 8 and len(report.unfinished) == 12
