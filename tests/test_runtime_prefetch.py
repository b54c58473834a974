"""Prefetch without a cluster: the worker-side call, the driver's reading of its answer,
and the run summary's line."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace
from typing import Any

import pytest

from pervade.core import ContextSpec, ContextState
from pervade.reports.summary import summary_rows
from pervade.runtime.prefetching import Prefetches
from pervade.runtime.stats import RunStats
from pervade.worker.plugin import PLUGIN_NAME
from pervade.worker.prefetch import PrefetchUnsupported, prefetch_context

SPEC = ContextSpec(loader="pkg.mod:build")


class Host:
    def __init__(self, starts: bool, state: ContextState = ContextState.ABSENT) -> None:
        self.starts, self.state, self.asked = starts, state, 0

    def prefetch(self, spec: ContextSpec) -> object | None:
        self.asked += 1
        return object() if self.starts else None

    def states(self) -> dict[str, ContextState]:
        return {SPEC.id: self.state}


def worker(host: object) -> Any:
    return SimpleNamespace(address="tcp://w1", plugins={PLUGIN_NAME: SimpleNamespace(host=host)})


def test_prefetch_context_starts_a_copy_or_says_why_not() -> None:
    started = Host(starts=True)
    assert prefetch_context(SPEC, dask_worker=worker(started)) is None
    assert started.asked == 1
    staged = Host(starts=False, state=ContextState.STAGED)
    assert prefetch_context(SPEC, dask_worker=worker(staged)) == "staged"


def test_prefetch_context_on_a_host_without_prefetch_names_the_problem() -> None:
    with pytest.raises(PrefetchUnsupported, match=r"no prefetch\(\)"):
        prefetch_context(SPEC, dask_worker=worker(object()))


def answered(value: str | None = None, error: Exception | None = None) -> Any:
    future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def tracked(future: Any, key: tuple[str, str] = ("w1", "c")) -> Prefetches:
    stages = Prefetches()
    stages._asked[key] = future  # as `ask` leaves it, without a cluster
    return stages


def test_the_driver_reads_a_prefetch_answer_for_the_core() -> None:
    key = ("w1", "c")
    copying = answered(None)
    stages = tracked(copying)
    assert stages.answer(key, copying) is None and key in stages  # STAGED report follows
    failed = answered(error=PrefetchUnsupported("old worker"))
    stages = tracked(failed)
    assert stages.answer(key, failed) is ContextState.FAILED and key not in stages
    for said, told in [
        ("staged", ContextState.STAGED),
        ("warm", ContextState.WARM),
        ("absent", ContextState.FAILED),
        ("loading", None),
    ]:
        future = answered(said)
        assert tracked(future).answer(key, future) is told, said
    # A stale answer (its worker left, or the stage was reported meanwhile) tells nothing.
    stages = tracked(failed)
    stages.left("w1")
    assert stages.answer(key, failed) is None


def test_the_summary_shows_prefetches_only_when_there_were_some() -> None:
    stats = RunStats()
    assert not any(name == "prefetch" for name, _ in summary_rows(stats, 1.0, None, {}))
    stats.prefetches, stats.staged = 3, 4
    rows = dict(summary_rows(stats, 1.0, None, {}))
    assert rows["prefetch"].startswith("3 contexts staged")


@pytest.mark.cluster
def test_a_stage_reaches_a_busy_worker_at_once_and_reports_staged() -> None:
    # In-process workers keep this cheap; the worker's one task slot is held by a sleeping
    # task, which a prefetch sent as a task would wait behind.
    import time

    from distributed import Client, LocalCluster

    from pervade.runtime.submit import submit_stage
    from pervade.worker.plugin import STATE_TOPIC, ContextHostPlugin

    spec = ContextSpec(loader="builtins:dict", args={"staged": 1})
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(ContextHostPlugin(peers=False))
        messages: list[dict[str, Any]] = []
        client.subscribe_topic(STATE_TOPIC, lambda event: messages.append(event[1]))
        [address] = client.scheduler_info()["workers"]
        busy = client.submit(time.sleep, 5.0, pure=False)
        time.sleep(0.5)
        began = time.monotonic()
        assert submit_stage(client, spec, address).result(timeout=10) is None
        assert time.monotonic() - began < 3.0, "the prefetch waited for the task slot"
        deadline = time.monotonic() + 10
        while not any(m["state"] == "staged" for m in messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m["context"] for m in messages if m["state"] == "staged"] == [spec.id]
        assert not busy.done()
