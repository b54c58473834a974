"""Simulated policies side by side, and the simulator's own speed.

    .venv/bin/python bench/simulate.py [--gpus 64] [--items 100000] [--work 0.5]
        [--model-gb 16] [--mtbe 3600] [--trace trace:bamboo-p3,fit=4h,floor=1,seed=1]
        [--seed 1] [--only warm]

A job of `--items` items of `--work` seconds each on the reference GPU (speed 1) and a model
of `--model-gb` GB, on a pool of `--gpus` GPUs in three classes (half at speed 1, a quarter
at 1.5, a quarter at 2.5), an origin of 2 GB/s shared by 8 readers, peers at 2 GB/s.
Scenarios: the whole pool with no churn; a Poisson churn of one eviction per worker every
`--mtbe` seconds (half graceful); each `--trace`; and the naive policy (every task builds
its own context from the origin) under the same churn. Printed: the table, and the wall
seconds each simulation took.

Simulator speed on a 2-core development machine (2026-11-26, `--only static`): 100 GPUs x
1,000,000 items 18 s; 1,000 GPUs x 100,000 items 77 s; 1,000 GPUs x 1,000,000 items 262 s
(target: under 60 s). A profile puts about 90% of it in `Dispatcher._fill`, which sorts and
scans every worker (and every task in flight) on each event.
"""

from __future__ import annotations

import argparse
import time

from pervade.core.churn import ChurnRate
from pervade.sim import GpuClass, Job, Loads, Pool, Scenario, SimResult, simulate, table
from pervade.traces import load_churn

GB = 10**9


def pool(gpus: int) -> Pool:
    quarter = max(1, gpus // 4)
    return Pool(
        (
            GpuClass("ref", gpus - 2 * quarter, 1.0),
            GpuClass("mid", quarter, 1.5),
            GpuClass("fast", quarter, 2.5),
        ),
        Loads(
            host_seconds=5.0,
            disk_seconds=10.0,
            peer_bandwidth=2 * GB,
            origin_bandwidth=2 * GB,
            origin_streams=8,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--work", type=float, default=0.5, help="seconds per item, speed 1")
    parser.add_argument("--model-gb", type=float, default=16.0)
    parser.add_argument("--mtbe", type=float, default=3600.0, help="seconds per worker")
    parser.add_argument("--trace", action="append", default=[], help="a --churn trace spec")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["static", "churn", "naive"], default=None)
    args = parser.parse_args()
    job = Job(args.items, args.work, int(args.model_gb * GB))
    gpus = pool(args.gpus)
    churn = ChurnRate(args.mtbe, graceful=0.5, rejoin_seconds=120.0)
    scenarios = {
        "static": Scenario(job, gpus, None, args.seed, sample_seconds=600.0),
        f"churn mtbe={args.mtbe:g}": Scenario(job, gpus, churn, args.seed, sample_seconds=600.0),
    }
    for spec in args.trace:
        scenarios[spec.removeprefix("trace:").split(",")[0]] = Scenario(
            job, gpus, load_churn(spec, gpus.size), args.seed, sample_seconds=600.0
        )
    scenarios["naive, same churn"] = Scenario(
        job, gpus, churn, args.seed, policy="naive", sample_seconds=600.0
    )
    if args.only:
        scenarios = {k: v for k, v in scenarios.items() if k.startswith(args.only)}
    rows: list[tuple[str, SimResult]] = []
    walls: list[str] = []
    for name, scenario in scenarios.items():
        began = time.perf_counter()  # the bench's own speed; the simulation reads no clock
        rows.append((name, simulate(scenario)))
        walls.append(f"{name}: {time.perf_counter() - began:.1f} s")
    print(f"{args.gpus} GPUs, {args.items} items of {args.work:g} s, {args.model_gb:g} GB model")
    print(table(rows))
    print("wall: " + "; ".join(walls))


if __name__ == "__main__":
    main()
