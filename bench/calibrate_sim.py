"""The simulated side of bench/calibrate.py: a profile measured from the real runs (work per
item, task overhead, builds, start-ups, drains) and the simulator's scenario of a run."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from calibrate_runs import WORKERS
from pervade.core.churn import ChurnRate, EvictionKind
from pervade.sim import GpuClass, Job, Loads, Pool, Replay, Scenario

HORIZON = 3600.0


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
