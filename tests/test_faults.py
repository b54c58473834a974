"""Faults inside a task on a real LocalCluster: a broken context is rebuilt, a process whose
device is unusable is replaced, an out-of-memory batch is split; every item still ends with
exactly one outcome and no innocent item is charged."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

import pervade
from pervade import DispatchConfig
from pervade.runtime.stats import RunStats
from tests.helpers import workloads

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
ITEMS = 96
# One failure alone fails an item: an innocent item charged even once would end as an error.
TASKS_OF_8 = DispatchConfig(min_task_items=8, max_task_items=8, max_failures=1)


def _run(
    client: Client, function: Any, options: dict[str, Any], records: list[dict[str, Any]]
) -> tuple[dict[str, pervade.Result], RunStats]:
    context = pervade.context(workloads.process_context, args={"tag": os.urandom(4).hex()})
    items = [(f"f{r['n']:03d}", r) for r in records]
    seen: Counter[str] = Counter()
    results: dict[str, pervade.Result] = {}
    stats: list[RunStats] = []
    for result in pervade.map(
        function,
        items,
        context=context,
        options=options,
        client=client,
        dispatch=TASKS_OF_8,
        observer=stats.append,
    ):
        seen[result.id] += 1
        results[result.id] = result
    assert set(seen.values()) == {1}, "an item was accepted twice"
    assert set(results) == {i for i, _ in items}, "an item was lost"
    return results, stats[-1]


def _records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [{"n": n} for n in range(ITEMS)]
    # The longest items run first: n=40, where the faults strike, is in the first task, so
    # plenty of work follows it on the worker it hit.
    records[40]["pad"] = "x" * 100
    return records


def test_a_broken_context_is_built_again_and_its_items_rerun(
    client: Client, tmp_path: Path
) -> None:
    options = {"marker_dir": str(tmp_path), "error": "context"}
    results, stats = _run(client, workloads.breaks_context_once, options, _records())
    assert all(r.ok for r in results.values()), "a broken context must not fail items"
    assert (tmp_path / "context").exists(), "the fault was injected"
    # Two first builds and one more, in the process (not restarted) whose task hit the broken
    # context; the item it was on ran again on another build (the new one, or the other
    # worker's, whichever took the requeued work first).
    assert stats.context_loads == 3
    served = results["f040"].value
    assert f"{served['pid']}:{served['build']}" != (tmp_path / "context").read_text()
    assert stats.restarts == 0 and stats.errors == 0


def test_a_device_error_replaces_the_worker_process(client: Client, tmp_path: Path) -> None:
    before = set(client.run(os.getpid).values())
    options = {"marker_dir": str(tmp_path), "error": "device"}
    results, stats = _run(client, workloads.breaks_context_once, options, _records())
    assert all(r.ok for r in results.values())
    assert stats.restarts == 1, "the worker whose device broke got a new process"
    assert stats.hard_evictions == 0, "a restart is not an eviction"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the restart goes on after the run has ended
        after = set(client.run(os.getpid).values())
        if len(after) == 2 and after != before:
            break
        time.sleep(0.5)
    assert len(before - after) == 1, "exactly one worker process was replaced"


def test_out_of_memory_once_splits_the_batch_without_rebuilding(
    client: Client, tmp_path: Path
) -> None:
    options = {"marker_dir": str(tmp_path), "error": "memory"}
    results, stats = _run(client, workloads.breaks_context_once, options, _records())
    assert all(r.ok for r in results.values())
    assert stats.oom_splits == 1
    builds = {(r.value["pid"], r.value["build"]) for r in results.values()}
    assert len(builds) == len({pid for pid, _ in builds}), "memory errors keep the context"


def test_batches_too_big_for_memory_are_split_down_to_what_fits(client: Client) -> None:
    records = _records()
    records[17]["huge"] = True  # does not fit even alone
    results, stats = _run(client, workloads.memory_bound, {"fits": 3}, records)
    failed = {i for i, r in results.items() if not r.ok}
    assert failed == {"f017"}, "only the item that cannot fit fails"
    assert "out of memory" in (results["f017"].error or "")
    assert all(r.value["batch"] <= 3 for i, r in results.items() if i != "f017")
    assert stats.oom_splits > 0
