"""What context reuse buys: the bundled fact-verification job three ways.

    .venv/bin/python bench/context_reuse.py [--items 360] [--task-items 30] [--workers 2]

(a) pervade: the model is a context, built once per worker and reused by every task;
(b) naive: the same tasks on the same cluster, but every task loads the model itself;
(c) ideal: one process that loads the model once and runs everything (all cores).
Then the dispatch overhead of a warm context: the wall time per task of many one-item tasks
of an empty function, on one worker and on all of them (tasks run side by side there).
Wall times of (a) and (b) start once the Dask cluster is up and its workers have imported
torch and transformers (as the process running (c) has); they include model loading.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pervade
from pervade.apps.fact_verification.app import BUNDLED_CLAIMS, BUNDLED_TEMPLATE, FactVerification
from pervade.core.config import DispatchConfig
from pervade.core.items import Item
from pervade.engines.bundled import resolve_model
from pervade.engines.hf import load_engine
from pervade.runtime.cluster import connect
from pervade.runtime.inputs import SourceItem, read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
import workloads


def load_items(count: int) -> list[SourceItem]:
    app = FactVerification.from_files(BUNDLED_TEMPLATE)
    items = [e for e in read_jsonl(BUNDLED_CLAIMS, app.parse) if isinstance(e, SourceItem)]
    while len(items) < count:  # repeat the bundled claims under new ids
        base = items[len(items) % 360]
        items.append(SourceItem(f"{base.id}-r{len(items)}", base.line, base.data, base.cost))
    return items[:count]


def timed_map(
    function: object,
    items: list[SourceItem],
    context: pervade.ContextSpec,
    options: dict[str, object],
    workers: int,
    dispatch: DispatchConfig,
) -> tuple[float, dict[str, object]]:
    with connect(None, workers) as client:
        client.wait_for_workers(workers)
        # Python imports are a process cost, not a context cost: (c) runs in a process
        # that has them already, so the workers get them before the clock starts too.
        client.run(workloads.warm_imports)
        started = time.perf_counter()
        verdicts = {
            r.id: r.value
            for r in pervade.map(
                function,
                [(i.id, i.data) for i in items],
                context=context,
                options=options,
                client=client,
                dispatch=dispatch,
            )
        }
        return time.perf_counter() - started, verdicts


def dispatch_overhead(workers: int, tasks: int) -> float:
    """Seconds of wall time per empty one-item task with a warm context (after a warm-up)."""
    one = DispatchConfig(min_task_items=1, max_task_items=1)
    context = pervade.context(workloads.nothing)
    with connect(None, workers) as client:
        client.wait_for_workers(workers)
        warm_up = [(f"w{i}", {"n": i}) for i in range(4 * workers)]
        list(pervade.map(workloads.echo, warm_up, context=context, client=client, dispatch=one))
        empty = [(f"e{i}", {"n": i}) for i in range(tasks)]
        started = time.perf_counter()
        done = sum(
            1
            for _ in pervade.map(
                workloads.echo, empty, context=context, client=client, dispatch=one
            )
        )
        return (time.perf_counter() - started) / done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=360)
    parser.add_argument("--task-items", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-tasks", type=int, default=400)
    args = parser.parse_args(argv)
    items = load_items(args.items)
    model = str(resolve_model("bundled:smollm2-135m-instruct"))
    choices = ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]
    fixed = DispatchConfig(min_task_items=args.task_items, max_task_items=args.task_items)
    tasks = -(-args.items // args.task_items)
    print(
        f"{args.items} items in {tasks} tasks of {args.task_items}, {args.workers} workers, "
        f"torch {torch.__version__}, {torch.get_num_threads()} cores",
        flush=True,
    )

    wall_a, out_a = timed_map(
        "pervade.apps.llm:choose",
        items,
        pervade.llm(model),
        {"choices": choices},
        args.workers,
        fixed,
    )
    print(f"(a) pervade  {wall_a:8.1f} s", flush=True)
    wall_b, _ = timed_map(
        workloads.naive_choose,
        items,
        pervade.context(workloads.nothing),
        {"model": model, "choices": choices},
        args.workers,
        fixed,
    )
    print(f"(b) naive    {wall_b:8.1f} s", flush=True)

    started = time.perf_counter()
    engine = load_engine(model)
    out_c = {}
    for begin in range(0, len(items), args.task_items):
        chunk = [Item(i.id, i.data) for i in items[begin : begin + args.task_items]]
        for item, value in zip(
            chunk, pervade.apps.llm.choose(engine, chunk, choices).values, strict=True
        ):
            out_c[item.id] = value
    wall_c = time.perf_counter() - started
    print(f"(c) ideal    {wall_c:8.1f} s", flush=True)
    agree = sum(out_a[k]["verdict"] == out_c[k]["verdict"] for k in out_c) / len(out_c)

    overhead = {n: dispatch_overhead(n, args.overhead_tasks) for n in sorted({1, args.workers})}
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| (a) pervade, warm contexts | {wall_a:.1f} s |")
    print(f"| (b) naive, a model load per task | {wall_b:.1f} s |")
    print(f"| (c) ideal, one process | {wall_c:.1f} s |")
    print(f"| a/c (target <= 1.10) | {wall_a / wall_c:.2f} |")
    print(f"| b/a | {wall_b / wall_a:.2f} |")
    print(f"| one model load in (c), page cache warm | {engine.load_seconds:.2f} s |")
    print(f"| verdicts of (a) equal to (c) | {100 * agree:.1f}% |")
    for n, per_task in overhead.items():
        print(
            f"| dispatch overhead, warm context, {n} worker(s) (target < 20 ms) | "
            f"{1000 * per_task:.1f} ms per task |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
