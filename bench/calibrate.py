"""The simulator against the real local cluster: the bundled job under churn, run for real
and simulated with profiles measured on this machine.

    .venv/bin/python bench/calibrate.py [--seeds 1,2,3] [--mtbe 60] [--graceful 0.5]
        [--rejoin 5] [--profile-each] [--quick] [--save runs.json | --load runs.json]

1. Profile: the bundled job (examples/fact_verification.toml: 360 claims, the bundled
   SmolLM2 model, CPU) on a fresh local cluster of 2 single-thread workers without churn.
   Measured: seconds of work per item (the workers' inference seconds over the items), the
   per-task overhead (each task's time on its worker, from the journal's attempts, beyond
   its inference), context builds by tier (the journal's context loads), and, after the
   job, the start-up of a worker restarted by its nanny (SIGKILL to registered) and of a
   new worker process (added to registered).
2. Real runs: the same job under `rate:mtbe=M,graceful=G,rejoin=R,seed=S` for each seed,
   with the churn harness, as `pervade run --churn` does. The makespan is measured as the
   simulator measures it: from the moment the workers are up to the last result accepted.
   From these runs also: how long a worker given notice takes to drain and leave (the
   grace behaviour: it stops at the end of its current slice).
3. Simulation of each run: the pool, loads, overhead and start-up from the profile; the
   harness's own eviction schedule for the seed (`core.churn.eviction_schedule`), moved to
   the run's start; replacements as the harness makes them (`pervade.sim.Replay`); a
   drain that lasts the measured drain time (the simulator's grace period).

Printed: the profile, and per seed the real and simulated makespans and their ratio. Other
people's processes on this machine slow the workers down by whatever CPU they take, so
the load average is printed beside each run, `--profile-each` measures a profile right
before each churned run (each simulated with its own), and a last column simulates each run
at the work per item and task overhead that run itself measured (a check of the churn
model alone).
`--quick` runs 60 claims and one seed (a smoke run, not a calibration). `--save` keeps the
measurements, `--load` simulates saved ones again without the real runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from pervade.cli.plan import build_plan
from pervade.core.churn import ChurnRate, EvictionKind
from pervade.core.config import DispatchConfig
from pervade.runtime.churn import ChurnHarness
from pervade.runtime.cluster import connect
from pervade.runtime.membership import worker_addresses
from pervade.runtime.session import run_job
from pervade.sim import GpuClass, Job, Loads, Pool, Replay, Scenario, simulate

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "fact_verification.toml"
WORKERS = 2
HORIZON = 3600.0


def plan_for(folder: Path, items: int | None) -> Any:
    sections = tomllib.loads(JOB.read_text())
    job = sections["job"]
    if items is not None:
        plan = build_plan(sections, JOB.parent, lambda _text: None)
        lines = plan.input.read_text().splitlines(keepends=True)[:items]
        (folder / "claims.jsonl").write_text("".join(lines))
        job["input"] = str(folder / "claims.jsonl")
    job["output"] = str(folder / "out.jsonl")
    job.pop("errors", None)
    job.pop("journal", None)
    return build_plan(sections, JOB.parent, lambda _text: None)


def wait_for(client: Any, ready: Any, timeout: float = 120.0) -> float:
    began = time.monotonic()
    while not ready(worker_addresses(client)):
        if time.monotonic() - began > timeout:
            raise TimeoutError("workers did not come up")
        time.sleep(0.05)
    return time.monotonic() - began


def startup(client: Any) -> dict[str, float]:
    """A worker restarted by its nanny, and a new worker process: seconds to registered."""
    before = worker_addresses(client)
    victim = sorted(before)[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    restart = wait_for(client, lambda now: len(now) == WORKERS and victim not in now)
    cluster = client.cluster
    cluster.worker_spec["calibrate-new"] = cluster.new_spec
    cluster.scale(len(cluster.worker_spec))
    new = wait_for(client, lambda now: len(now) == WORKERS + 1)
    return {"restart": restart, "new": new}


def real_run(items: int | None, rate: ChurnRate | None, folder: Path) -> dict[str, Any]:
    plan = plan_for(folder, items)
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}  # others' work on this machine
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(connect(None, WORKERS, preload=plan.job.worker_modules))
        harness = None
        churn_wall = time.time()
        churn_mono = time.monotonic()  # the harness's clock starts as it is entered
        if rate is not None:
            harness = stack.enter_context(ChurnHarness(client.cluster, client, rate, WORKERS))
        client.wait_for_workers(WORKERS)
        started_mono, started = time.monotonic(), time.time()
        stats = run_job(
            client, plan.job, plan.input, plan.parse, plan.output, plan.errors, plan.journal
        )
        out["returned"] = time.time() - started
        out["load_after"] = os.getloadavg()[1]  # the 5-minute average, over the run
        if harness is None:
            out["startup"] = startup(client)
        else:
            out["shift"] = started_mono - churn_mono
            out["churn"] = [(r.at, r.kind.value, r.worker) for r in harness.log]
            out["joins"] = [j.at for j in harness.joins]
    out.update(journal_facts(plan.journal, started, churn_wall))
    out.update(
        items=stats.results,
        tasks=stats.tasks,
        infer_seconds=stats.infer_seconds,
        hard=stats.hard_evictions,
        graceful=stats.graceful_evictions,
        rerun=stats.rerun_items,
        dispatch=dataclasses.asdict(plan.job.dispatch),
    )
    results = [json.loads(line) for line in plan.output.read_text().splitlines()]
    assert len({r["id"] for r in results}) == len(results) == stats.results, "lost or duplicated"
    return out


def journal_facts(path: Path, started: float, churn_wall: float) -> dict[str, Any]:
    db = sqlite3.connect(path)
    try:
        (last,) = db.execute("SELECT max(accepted) FROM outcomes").fetchone()
        loads = db.execute("SELECT worker, seconds, at, tier, bytes FROM context_loads").fetchall()
        events = db.execute("SELECT worker, event, at FROM worker_events ORDER BY at").fetchall()
        tasks = db.execute(
            "SELECT task, worker, min(started), max(ended), count(*), "
            "sum(outcome = 'result' OR outcome = 'accepted') FROM attempts GROUP BY task"
        ).fetchall()
        outcomes = dict(
            db.execute("SELECT DISTINCT outcome, 1 FROM attempts WHERE outcome IS NOT NULL")
        )
    finally:
        db.close()
    return {
        "makespan": last - started,
        "started": started,
        "churn_wall": churn_wall,
        "loads": [(w, s, at - started, tier, b) for w, s, at, tier, b in loads],
        "events": [(w, e, at - started) for w, e, at in events],
        "task_spans": [
            (t, w, s - started, (e - started) if e else None, n) for t, w, s, e, n, _ in tasks
        ],
        "outcomes": sorted(outcomes),
    }


def task_overhead(run: dict[str, Any]) -> float:
    """Seconds per task on its worker beyond its inference: on each worker, a task occupies
    it from when it was sent (or the previous task ended, or the worker's context became
    warm) to when its results were accepted."""
    warm = {w: at for w, _s, at, _t, _b in run["loads"]}
    by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _t, w, s, e, _n in run["task_spans"]:
        if e is not None:
            by_worker[w].append((s, e))
    busy = 0.0
    for w, spans in by_worker.items():
        free = warm.get(w, 0.0)
        for s, e in sorted(spans, key=lambda x: x[1]):
            busy += max(0.0, e - max(s, free))
            free = max(free, e)
    return max(0.0, (busy - run["infer_seconds"]) / max(1, run["tasks"]))


def drain_seconds(run: dict[str, Any]) -> list[float]:
    """From each graceful eviction's notice to the worker leaving (the journal's 'drained')."""
    offset = run["churn_wall"] - run["started"]
    gone = {w: at for w, e, at in run["events"] if e != "joined"}
    return [
        gone[w] - (offset + at)
        for at, kind, w in run["churn"]
        if kind == EvictionKind.GRACEFUL.value and w in gone
    ]


def start_seconds(run: dict[str, Any]) -> dict[str, list[float]]:
    """Start-up as the driver sees it: from a hard kill (the nanny restarts the worker) or
    a graceful eviction's replacement being started, to the driver's 'joined' for the new
    worker. Replacements and joins are paired in order (each takes a second or two)."""
    offset = run["churn_wall"] - run["started"]
    started = [(offset + at, "restart") for at, kind, _w in run["churn"] if kind == "hard"]
    started += [(offset + at, "new") for at in run["joins"]]
    joined = sorted(at for _w, e, at in run["events"] if e == "joined" and at > 1.0)
    found: dict[str, list[float]] = {"restart": [], "new": []}
    for at, kind in sorted(started):
        later = [j for j in joined if j >= at]
        if later:
            found[kind].append(later[0] - at)
            joined.remove(later[0])
    return found


def tiers_of(loads: list[Any]) -> dict[str, list[float]]:
    tiers: dict[str, list[float]] = defaultdict(list)
    for _w, seconds, _at, tier, _b in loads:
        tiers[tier or "unknown"].append(seconds)
    return tiers


def profile_of(base: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The profile run's work, overhead and builds; start-ups and drains as the churn runs
    saw them (a measurement of the mechanism, not of the makespan). Start-ups are medians:
    a kill that takes a worker still starting (registered, not yet seen by the driver) pairs
    a kill with a late join."""
    later = [load for run in runs for load in run["loads"] if load[2] > 5.0]
    builds = [s for _w, s, *_ in base["loads"] + later]
    drains = [d for run in runs for d in drain_seconds(run)]
    starts: dict[str, list[float]] = {"restart": [], "new": []}
    for run in runs:
        for kind, values in start_seconds(run).items():
            starts[kind] += values
    return {
        "work": base["infer_seconds"] / base["items"],
        "overhead": task_overhead(base),
        "build": statistics.mean(builds),
        "builds": len(builds),
        "tiers": {
            t: (len(v), statistics.mean(v)) for t, v in sorted(tiers_of(base["loads"]).items())
        },
        "rebuild_tiers": {
            t: (len(v), statistics.mean(v)) for t, v in sorted(tiers_of(later).items())
        },
        "model_bytes": max([b for *_, b in base["loads"]] + [1]),
        "registered": base["startup"],
        "restart": statistics.median(starts["restart"])
        if starts["restart"]
        else base["startup"]["restart"],
        "restarts": len(starts["restart"]),
        "new": statistics.median(starts["new"]) if starts["new"] else base["startup"]["new"],
        "news": len(starts["new"]),
        "drain": statistics.mean(drains) if drains else 1.0,
        "drains": len(drains),
        "no_churn": base["makespan"],
    }


def at_run_speed(prof: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The profile with the work per item and task overhead this run itself measured: what
    is left of the difference is the churn model's, not other processes' CPU use."""
    return prof | {"work": run["infer_seconds"] / run["items"], "overhead": task_overhead(run)}


def scenario(
    prof: dict[str, Any], items: int, rate: ChurnRate | None, shift: float, dispatch: Any
) -> Scenario:
    # The model is always on the node here (the journal's tier is "host"): every build
    # costs the measured build time, and the bytes come at no cost from wherever they are.
    size = prof["model_bytes"]
    loads = Loads(
        host_seconds=prof["build"],
        disk_seconds=0.0,
        peer_bandwidth=1e18,
        origin_bandwidth=size * 1e6,
        origin_streams=1,
    )
    pool = Pool(
        (GpuClass("cpu", WORKERS, 1.0),),
        loads,
        task_overhead_seconds=prof["overhead"],
        start_seconds=prof["new"],
    )
    availability = (
        None
        if rate is None
        else Replay.of_rate(rate, WORKERS, HORIZON, shift=shift, restart_seconds=prof["restart"])
    )
    return Scenario(
        Job(items, prof["work"], size),
        pool,
        availability,
        seed=rate.seed if rate else 0,
        dispatch=dispatch,
        policy="pervade",
        grace_seconds=prof["drain"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--mtbe", type=float, default=60.0)
    parser.add_argument("--graceful", type=float, default=0.5)
    parser.add_argument("--rejoin", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="60 claims, one seed: a smoke run")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--load", type=Path, default=None)
    parser.add_argument(
        "--profile-each",
        action="store_true",
        help="a profile run before each churned run, and each simulated with its own",
    )
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    items = 60 if args.quick else None
    if args.quick:
        seeds = seeds[:1]
    rates = {s: ChurnRate(args.mtbe, args.graceful, args.rejoin, seed=s) for s in seeds}
    if args.load is not None:
        saved = json.loads(args.load.read_text())
        bases, runs = saved.get("bases") or [saved["base"]], saved["runs"]
    else:
        bases, runs = [], []
        for seed, rate in rates.items():
            if args.profile_each or not bases:
                with tempfile.TemporaryDirectory(prefix="pervade-calibrate-") as scratch:
                    bases.append(real_run(items, None, Path(scratch)))
                print(f"profile run: {bases[-1]['makespan']:.1f} s", flush=True)
            with tempfile.TemporaryDirectory(prefix="pervade-calibrate-") as scratch:
                runs.append(real_run(items, rate, Path(scratch)))
            print(f"seed {seed}: {runs[-1]['makespan']:.1f} s", flush=True)
            if args.save is not None:  # after each run: a late failure keeps the rest
                args.save.write_text(json.dumps({"base": bases[0], "bases": bases, "runs": runs}))
    profiles = [profile_of(base, runs) for base in bases]
    base = bases[0]
    dispatch = DispatchConfig(**base["dispatch"]) if base.get("dispatch") else DispatchConfig()
    print_report(profiles, bases, runs, rates, base["items"], dispatch)
    return 0


def loadavg(run: dict[str, Any]) -> str:
    return f"{run.get('load_before', math.nan):.2f} / {run.get('load_after', math.nan):.2f}"


def print_report(
    profiles: list[dict[str, Any]],
    bases: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    rates: dict[int, ChurnRate],
    n: int,
    dispatch: DispatchConfig,
) -> None:
    prof, base = profiles[0], bases[0]
    tiers = ", ".join(f"{t} {k}x {s:.2f} s" for t, (k, s) in prof["tiers"].items())
    later = ", ".join(f"{t} {k}x {s:.2f} s" for t, (k, s) in prof["rebuild_tiers"].items())
    reg = prof["registered"]
    print()
    print(f"Profile ({n} items, {WORKERS} single-thread workers; no churn unless said):")
    print("| measured | value |")
    print("| --- | --- |")
    works = " / ".join(f"{p['work']:.3f}" for p in profiles)
    print(f"| work per item (each profile run) | {works} s |")
    print(
        f"| task overhead (beyond its items' work) | {prof['overhead']:.3f} s "
        f"({base['tasks']} tasks) |"
    )
    print(f"| context builds at the start, by tier | {tiers} |")
    print(f"| context builds under churn, by tier | {later or 'none'} |")
    print(f"| build time simulated (mean of {prof['builds']}) | {prof['build']:.2f} s |")
    print(
        "| start-up, kill to registered / new process to registered (after the job) "
        f"| {reg['restart']:.2f} s / {reg['new']:.2f} s |"
    )
    print(
        f"| start-up as the driver sees it under churn: nanny restart ({prof['restarts']}) / "
        f"new worker ({prof['news']}), medians | {prof['restart']:.2f} s / {prof['new']:.2f} s |"
    )
    print(
        f"| drain under churn: notice to gone (mean of {prof['drains']}) | {prof['drain']:.2f} s |"
    )
    print(f"| load average before / over the run | {loadavg(base)} |")
    sim0 = simulate(scenario(prof, n, None, 0.0, dispatch)).makespan
    print(
        f"| no churn: real / simulated makespan | {prof['no_churn']:.1f} s / {sim0:.1f} s "
        f"({sim0 / prof['no_churn']:.2f}) |"
    )
    print()
    print(
        "| seed | load avg before / over run | evictions hard/graceful (harness; seen) "
        "| real makespan | profile's work per item | simulated | sim / real "
        "| work per item in the run "
        "| simulated at the run's speed | sim / real |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios, reals, sims, own = [], [], [], []
    for i, ((seed, rate), run) in enumerate(zip(rates.items(), runs, strict=True)):
        prof = profiles[i] if len(profiles) == len(runs) else profiles[0]
        result = simulate(scenario(prof, n, rate, run["shift"], dispatch))
        fast = simulate(scenario(at_run_speed(prof, run), n, rate, run["shift"], dispatch))
        hard = sum(kind == "hard" for _at, kind, _w in run["churn"])
        ratio = result.makespan / run["makespan"]
        ratios.append(ratio)
        reals.append(run["makespan"])
        sims.append(result.makespan)
        own.append(fast.makespan)
        print(
            f"| {seed} | {loadavg(run)} "
            f"| {hard}/{len(run['churn']) - hard} ({run['hard']}/{run['graceful']}) "
            f"| {run['makespan']:.1f} s | {prof['work']:.3f} s "
            f"| {result.makespan:.1f} s | {ratio:.2f} "
            f"| {run['infer_seconds'] / run['items']:.3f} s "
            f"| {fast.makespan:.1f} s | {fast.makespan / run['makespan']:.2f} |"
        )
    if ratios:
        mean_real, mean_sim = statistics.mean(reals), statistics.mean(sims)
        mean_own = statistics.mean(own)
        print(
            f"| mean | | | {mean_real:.1f} s | | {mean_sim:.1f} s | {mean_sim / mean_real:.2f} "
            f"| | {mean_own:.1f} s | {mean_own / mean_real:.2f} |"
        )
        worst = max(abs(r - 1) for r in ratios)
        verdict = "within" if worst <= 0.15 else "NOT within"
        print(
            f"\nwith the profile: mean sim/real {mean_sim / mean_real:.2f}, worst seed "
            f"|sim/real - 1| = {worst:.1%}: {verdict} 15%"
        )


if __name__ == "__main__":
    sys.exit(main())
