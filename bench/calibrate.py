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
import json
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from calibrate_runs import WORKERS, real_run
from calibrate_sim import at_run_speed, profile_of, scenario
from pervade.core.churn import ChurnRate
from pervade.core.config import DispatchConfig
from pervade.sim import simulate


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
