"""The dispatcher's policies against the published reference, in simulation: one table per
claim, every number from a run of the simulator (which drives the real dispatcher).

    .venv/bin/python bench/policies.py paper   [--seed 1] [--plot P.png] [--html P.html]
    .venv/bin/python bench/policies.py traces  [--seed 1] [--batches 1,10,64,100,300,1000]
    .venv/bin/python bench/policies.py scale   [--gpus 1000] [--items 1000000]

paper: a fact-verification job of 150,000 claims with an 8B model (16 GB of weights) on a
campus pool of 567 GPUs in five classes, of which at most a third (189) are idle at any time:
twelve hours of the Helios vc6YE idle-GPU trace (from hour 276), played in real time,
its peak scaled to 189 GPUs.
A context build costs minutes: the weights come from shared storage that all readers share
(1 GB/s, 4 reads at a time, 16 s a read alone), then 60 s to set up the environment and move
the weights to the GPU. Naive (every task loads its own model, as batch jobs do), reference
PCM (warm reuse and peer copies, the user's batch, no drain, no tail copies, no adaptive
sizing), pervade, and a static allocation of the same 189 GPUs after an hour's queue wait.

traces: the same job and loads on three real traces, each played in real time on a pool of the
trace's size (its slots are GPUs of the five classes): AWS p3 and g4dn spot instances (Bamboo;
every eviction with notice, 120 s; g4dn down to one instance at times) and the Helios vchbv
idle GPUs (GPUs taken back by their owners' jobs: half with 30 s notice, half without).
pervade and reference PCM at each user batch size.

scale: the simulator's own speed, the wall time of 1,000 GPUs and 1,000,000 items.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from random import Random

from pervade.core.availability import TraceChurn, trace_schedule
from pervade.sim import GpuClass, Job, Loads, Scenario, SimResult, simulate, table
from pervade.sim.model import Pool
from pervade.traces import load_churn

GB = 10**9
CLAIMS = 150_000
WORK = 0.5  # seconds per claim on the reference class (an A10-like GPU)
MODEL = 16 * GB  # Llama-3.1-8B in bf16
CAMPUS = (  # name, share of the pool, speed against the reference, memory
    ("h100", 0.07, 3.0, 80),
    ("a100", 0.11, 2.0, 80),
    ("a40", 0.21, 1.2, 48),
    ("a10", 0.32, 1.0, 24),
    ("rtx6000", 0.29, 0.6, 24),
)
LOADS = Loads(
    host_seconds=60.0,
    disk_seconds=20.0,
    peer_bandwidth=1.25 * GB,  # 10 GbE between nodes
    origin_bandwidth=1.0 * GB,
    origin_streams=4,
)
TRACES = {
    "bamboo-p3": "trace:bamboo-p3,speed=1,per=1,graceful=1,seed={seed}",
    "helios-vchbv": "trace:helios-vchbv,start=0h,length=12h,speed=1,per=1,graceful=0.5,seed={seed}",
    "bamboo-g4dn": "trace:bamboo-g4dn,speed=1,per=1,graceful=1,floor=1,seed={seed}",
}
GRACE = {"bamboo-p3": 120.0, "helios-vchbv": 30.0, "bamboo-g4dn": 120.0}


def campus(gpus: int) -> Pool:
    """`gpus` GPUs split over the campus classes by their shares (rounding into the last)."""
    counts = [round(gpus * share) for _, share, _, _ in CAMPUS]
    counts[-1] += gpus - sum(counts)
    classes = tuple(
        GpuClass(name, count, speed, memory * GB)
        for (name, _, speed, memory), count in zip(CAMPUS, counts, strict=True)
    )
    return Pool(classes, LOADS)


def capacity_bound(pool: Pool, churn: TraceChurn, seed: int, work: float, grace: float) -> float:
    """Seconds until the GPUs the trace makes available could have done `work` GPU-seconds
    (at speed 1) with no model load, no task overhead and no lost work: no policy can finish
    sooner. A GPU given notice counts until its grace period ends; available slots are the
    pool's first ones, whose classes interleave."""
    timeline = trace_schedule(churn, pool.size, Random(seed)).pool
    prefix = [0.0]
    for gpu in pool.slot_classes():
        prefix.append(prefix[-1] + gpu.speed)
    steps = list(zip(timeline.times, timeline.counts, strict=True))
    edges = sorted({t for t, _ in steps} | {t + grace for t, _ in steps})
    done = 0.0
    for start, end in zip(edges, [*edges[1:], math.inf], strict=True):
        # Up to `grace` seconds after a drop, the GPUs that left may still be working: the
        # most GPUs in force at any moment of [start - grace, start].
        count = max(
            [timeline.at(start - grace)] + [c for t, c in steps if start - grace < t <= start]
        )
        rate = prefix[min(count, len(prefix) - 1)]
        if rate > 0 and done + rate * (end - start) >= work:
            return start + (work - done) / rate
        done += rate * (end - start)
    return math.inf


def run(rows: list[tuple[str, SimResult]], name: str, scenario: Scenario) -> SimResult:
    began = time.perf_counter()  # the bench's own speed; the simulation reads no clock
    result = simulate(scenario)
    rows.append((name, result))
    print(f"  {name}: simulated in {time.perf_counter() - began:.1f} s", flush=True)
    return result


def paper(args: argparse.Namespace) -> None:
    job = Job(CLAIMS, WORK, MODEL)
    pool = campus(567)
    spec = f"trace:helios-vc6YE,start=276h,length=12h,speed=1,per=1.1,graceful=0.5,seed={args.seed}"
    churn = load_churn(spec, pool.size)
    rows: list[tuple[str, SimResult]] = []
    results = {}
    for policy in ("naive", "reference", "pervade"):
        results[policy] = run(
            rows,
            f"{policy} b={args.batch}",
            Scenario(job, pool, churn, args.seed, policy=policy, batch=args.batch,
                     grace_seconds=30.0, sample_seconds=60.0),
        )  # fmt: skip
    static = Scenario(job, pool, None, args.seed, policy="static", static_gpus=189,
                      queue_wait_seconds=3600.0, sample_seconds=60.0)  # fmt: skip
    results["static"] = run(rows, "static 189 +1h queue", static)
    print(f"\n150,000 claims, 8B model, 567 GPUs at most a third idle ({spec}):")
    print(table(rows))
    naive, ref, ours = (results[p].makespan for p in ("naive", "reference", "pervade"))
    print(f"reference PCM against naive: execution time cut by {1 - ref / naive:.1%}")
    print(f"pervade against naive:       execution time cut by {1 - ours / naive:.1%}")
    print(f"pervade against reference:   makespan {ours / ref - 1:+.1%}")
    _plots(args, rows, "150,000 claims on a campus pool (Helios vc6YE idle GPUs)")


def traces(args: argparse.Namespace) -> None:
    job = Job(CLAIMS, WORK, MODEL)
    for trace, spec in TRACES.items():
        text = spec.format(seed=args.seed)
        probe = load_churn(text, 1)
        assert isinstance(probe, TraceChurn)
        peak = probe.timeline.peak
        pool = campus(peak)
        churn = load_churn(text, pool.size)
        rows: list[tuple[str, SimResult]] = []
        spans: dict[str, list[float]] = {"pervade": [], "reference": []}
        for batch in args.batches:
            for policy in ("reference", "pervade"):
                result = run(
                    rows,
                    f"{policy} b={batch}",
                    Scenario(job, pool, churn, args.seed, policy=policy, batch=batch,
                             grace_seconds=GRACE[trace], sample_seconds=60.0),
                )  # fmt: skip
                spans[policy].append(result.makespan)
        print(f"\n{trace}: 150,000 claims on {pool.size} GPUs ({text})")
        print(table(rows))
        assert isinstance(churn, TraceChurn)
        bound = capacity_bound(pool, churn, args.seed, CLAIMS * WORK, GRACE[trace])
        what = "the trace's GPUs to the end of their notice, no loads, no overhead"
        print(f"capacity bound ({what}): {bound:.0f} s")
        print(f"{'batch':>6} {'reference s':>12} {'pervade s':>10} {'pervade vs ref':>15}")
        for batch, ref, ours in zip(args.batches, spans["reference"], spans["pervade"],
                                    strict=True):  # fmt: skip
            print(f"{batch:>6} {ref:>12.0f} {ours:>10.0f} {ours / ref - 1:>+15.1%}")
        print(f"pervade over the bound: {min(spans['pervade']) / bound - 1:+.1%}; reference's "
              f"best over the bound: {min(spans['reference']) / bound - 1:+.1%}")  # fmt: skip
        for policy, values in spans.items():
            print(
                f"{policy:>9}: best {min(values):.0f} s, worst {max(values):.0f} s, "
                f"worst/best {max(values) / min(values):.2f}"
            )
        print(
            f"pervade's worst batch against reference's best batch: "
            f"{max(spans['pervade']) / min(spans['reference']) - 1:+.1%}"
        )


def scale(args: argparse.Namespace) -> None:
    job = Job(args.items, WORK, MODEL)
    pool = campus(args.gpus)
    churn = load_churn("rate:mtbe=3600,graceful=0.5,rejoin=120,seed=1", pool.size)
    rows: list[tuple[str, SimResult]] = []
    for name, availability in (("no churn", None), ("mtbe=3600", churn)):
        began = time.perf_counter()
        run(rows, f"pervade {name}", Scenario(job, pool, availability, 1, sample_seconds=600.0))
        print(f"{args.gpus} GPUs x {args.items} items, {name}: wall "
              f"{time.perf_counter() - began:.1f} s (target < 60 s)")  # fmt: skip
    print(table(rows))


def _plots(args: argparse.Namespace, rows: Sequence[tuple[str, SimResult]], title: str) -> None:
    if not (args.plot or args.html):
        return
    from pervade.sim import plot

    if args.plot:
        plot.write_png(list(rows), args.plot, title)
    if args.html:
        plot.write_html(list(rows), args.html, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("claim", choices=("paper", "traces", "scale"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=100, help="paper: the user's batch")
    parser.add_argument(
        "--batches",
        type=lambda text: [int(n) for n in text.split(",") if n.strip()],
        default=[1, 10, 64, 100, 300, 1000],
    )
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--html", type=Path, default=None)
    args = parser.parse_args()
    {"paper": paper, "traces": traces, "scale": scale}[args.claim](args)


if __name__ == "__main__":
    main()
