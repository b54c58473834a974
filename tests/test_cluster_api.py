"""pervade.map on a real LocalCluster with cheap, non-LLM contexts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from distributed import Client

import pervade
from pervade import DispatchConfig, Item
from tests.helpers import workloads

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_context_is_built_once_per_worker_and_reused_by_every_task(client: Client) -> None:
    context = pervade.context(workloads.process_context, args={"tag": "reuse"})
    items = [(f"i{n}", {"n": n}) for n in range(200)]
    small_tasks = DispatchConfig(min_task_items=4, max_task_items=4)
    results = list(
        pervade.map(workloads.describe, items, context=context, client=client, dispatch=small_tasks)
    )
    assert Counter(r.id for r in results) == Counter(i for i, _ in items)
    assert all(r.ok for r in results)
    assert sorted(r.value["n"] for r in results) == list(range(200))
    builds_per_process: dict[int, set[int]] = {}
    for r in results:
        builds_per_process.setdefault(r.value["pid"], set()).add(r.value["build"])
    # 50 tasks, one build per worker process: the context was reused by every other task.
    assert len(builds_per_process) == 2
    assert all(len(builds) == 1 for builds in builds_per_process.values())


def test_item_errors_are_isolated_and_raising_batches_are_split(client: Client) -> None:
    context = pervade.context(workloads.process_context, args={"tag": "errors"})
    items = [Item(f"p{n}", {"n": n, "poison": n == 7}) for n in range(40)]
    # Batches of 8, so that the poisoned item raises in company; one failure alone fails an
    # item, so an innocent neighbour charged even once would end as an error.
    once = DispatchConfig(min_task_items=8, max_task_items=8, max_failures=1)
    results = _exactly_once(
        pervade.map(workloads.poisoned, items, context=context, client=client, dispatch=once)
    )
    assert set(results) == {item.id for item in items}
    assert not results["p7"].ok and "poisoned item" in str(results["p7"].error)
    assert all(results[f"p{n}"].ok for n in range(40) if n != 7)

    marked = [(f"b{n}", {"n": n, "bad": n % 10 == 0}) for n in range(30)]
    outcome = _exactly_once(
        pervade.map(workloads.describe, marked, context=context, client=client, dispatch=once)
    )
    assert {k for k, r in outcome.items() if not r.ok} == {"b0", "b10", "b20"}
    assert "marked bad" in str(outcome["b10"].error)


def _exactly_once(results: Iterable[pervade.Result]) -> dict[str, pervade.Result]:
    by_id: dict[str, pervade.Result] = {}
    for result in results:
        assert result.id not in by_id, f"{result.id} was accepted twice"
        by_id[result.id] = result
    return by_id


def test_a_journal_makes_a_rerun_skip_finished_items(client: Client, tmp_path: Path) -> None:
    context = pervade.context(workloads.process_context, args={"tag": "journal"})
    journal = tmp_path / "run.sqlite"
    first = [(f"j{n}", {"n": n}) for n in range(30)]
    done = list(
        pervade.map(
            workloads.describe,
            first,
            context=context,
            client=client,
            journal=journal,
            output=tmp_path / "out.jsonl",
        )
    )
    assert len(done) == 30
    more = first + [(f"j{n}", {"n": n}) for n in range(30, 45)]
    again = list(
        pervade.map(
            workloads.describe,
            more,
            context=context,
            client=client,
            journal=journal,
            output=tmp_path / "out.jsonl",
        )
    )
    assert sorted(r.id for r in again) == sorted(f"j{n}" for n in range(30, 45))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 45


def test_a_function_defined_in_a_test_travels_by_value(client: Client) -> None:
    offset = 1000

    def add_offset(_context: object, items: list[Item]) -> list[int]:
        return [item.data["n"] + offset for item in items]

    context = pervade.context(workloads.process_context, args={"tag": "closure"})
    values = {
        r.id: r.value
        for r in pervade.map(
            add_offset, [(f"c{n}", {"n": n}) for n in range(10)], context=context, client=client
        )
    }
    assert values == {f"c{n}": n + 1000 for n in range(10)}


def test_cli_on_an_existing_scheduler_reuses_contexts_already_warm_there(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pervade.cli.main import main
    from tests.helpers.jobs import generic_job, read_ids

    address = client.scheduler.address
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for folder, items in ((first, 20), (second, 30)):
        job = generic_job(folder, items)
        assert main(["run", str(job), "--scheduler", address, "--quiet"]) == 0
        assert len(read_ids(folder / "out" / "results.jsonl")) == items
    printed = capsys.readouterr().out
    # The first driver built the context on both workers; the second found it warm there.
    assert "(2 loads)" in printed and "(0 loads)" in printed
