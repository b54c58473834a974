"""What context reuse buys: the bundled fact-verification job three ways.

    .venv/bin/python bench/context_reuse.py [--items 360] [--task-items 30] [--workers 2]
        [--repeat 3]

(a) pervade: the model is a context, built once per worker and reused by every task;
(b) naive: the same tasks on the same cluster, but every task loads the model itself;
(c) ideal: one process that loads the model once and runs everything (all cores).
Each way runs --repeat times, in a rotating order; the table shows medians.
Then the dispatch overhead of a warm context: the wall time per task of many one-item tasks
of an empty function, on one worker and on all of them (tasks run side by side there).
Wall times of (a) and (b) start once the Dask cluster is up and its workers have imported
torch and transformers (as the process running (c) has); they include model loading.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
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


def _verdict(value: object) -> object:
    return value.get("verdict") if isinstance(value, dict) else value


def _each(walls: list[float]) -> str:
    return "[" + ", ".join(f"{wall:.1f}" for wall in walls) + "]"


def _commit() -> str:
    """The checkout's commit, to name the code a table was measured on."""
    found = subprocess.run(
        [
            "git",
            "-C",
            str(Path(__file__).resolve().parent.parent),
            "describe",
            "--always",
            "--dirty",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "an unknown commit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=360)
    parser.add_argument("--task-items", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-tasks", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (a), (b) and (c)")
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

    def run_a() -> tuple[float, dict[str, object]]:
        return timed_map(
            "pervade.apps.llm:choose",
            items,
            pervade.llm(model),
            {"choices": choices},
            args.workers,
            fixed,
        )

    def run_b() -> tuple[float, dict[str, object]]:
        return timed_map(
            workloads.naive_choose,
            items,
            pervade.context(workloads.nothing),
            {"model": model, "choices": choices},
            args.workers,
            fixed,
        )

    def run_c() -> tuple[float, dict[str, object]]:
        started = time.perf_counter()
        engine = load_engine(model)
        load_seconds.append(engine.load_seconds)
        out: dict[str, object] = {}
        for begin in range(0, len(items), args.task_items):
            chunk = [Item(i.id, i.data) for i in items[begin : begin + args.task_items]]
            values = pervade.apps.llm.choose(engine, chunk, choices).values
            out.update((item.id, value) for item, value in zip(chunk, values, strict=True))
        return time.perf_counter() - started, out

    ways = {"a": run_a, "b": run_b, "c": run_c}
    walls: dict[str, list[float]] = {way: [] for way in ways}
    outputs: dict[str, dict[str, object]] = {}
    load_seconds: list[float] = []
    for round_ in range(args.repeat):
        # Each round in another order, so that a slow spell of a shared machine does not
        # always fall on the same way.
        order = "abc"[round_ % 3 :] + "abc"[: round_ % 3]
        for way in order:
            wall, outputs[way] = ways[way]()
            walls[way].append(wall)
            print(f"round {round_ + 1}: ({way}) {wall:8.1f} s", flush=True)
    out_a, out_c = outputs["a"], outputs["c"]
    agree = sum(_verdict(out_a[k]) == _verdict(out_c[k]) for k in out_c) / len(out_c)
    wall_a, wall_b, wall_c = (statistics.median(walls[way]) for way in "abc")

    overhead = {n: dispatch_overhead(n, args.overhead_tasks) for n in sorted({1, args.workers})}
    print()
    print(f"pervade at {_commit()}; median of {args.repeat} rounds (each round's walls in [])")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| (a) pervade, warm contexts | {wall_a:.1f} s {_each(walls['a'])} |")
    print(f"| (b) naive, a model load per task | {wall_b:.1f} s {_each(walls['b'])} |")
    print(f"| (c) ideal, one process | {wall_c:.1f} s {_each(walls['c'])} |")
    print(f"| a/c (target <= 1.10) | {wall_a / wall_c:.2f} |")
    print(f"| b/a | {wall_b / wall_a:.2f} |")
    load = statistics.median(load_seconds)
    print(f"| one model load in (c), page cache warm | {load:.2f} s |")
    print(f"| verdicts of (a) equal to (c) | {100 * agree:.1f}% |")
    for n, per_task in overhead.items():
        print(
            f"| dispatch overhead, warm context, {n} worker(s) (target < 20 ms) | "
            f"{1000 * per_task:.1f} ms per task |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
