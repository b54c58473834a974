"""The bundled job under churn: what evictions cost on the local cluster.

    .venv/bin/python bench/churn.py [--items 360] [--rates 0,60,30] [--graceful 0.5]
        [--seeds 1,2,3] [--trace trace:bamboo-p3,start=2h,fit=120,seed=1 ...]

For each mean time between evictions per worker (0 = no churn) the bundled fact-verification
job runs on a fresh local cluster of 2 workers while the churn harness evicts and replaces
workers (half of them gracefully by default), once per seed; then, for each `--trace` spec (the
`--churn trace:...` syntax of the README), on a pool that follows that availability trace
scaled to 2 workers. Printed per run: wall time and its ratio to the first run (the run
without churn by default), evictions and the mean seconds between them per worker that the
seeded draw gave (wall × workers / evictions), item attempts lost to evictions without notice,
unstarted items handed back by draining workers, items whose work was lost and redone, the
items of those that a draining worker had taken (a graceful eviction should redo none: its
worker reports what it finished and hands the rest back unstarted), and the run's goodput
accounts (the summary's: the share of the workers' time, from each one's
arrival to its departure, spent on accepted results, loading contexts, lost to re-execution,
or idle).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pervade.cli.plan import build_plan
from pervade.core.availability import Churn
from pervade.core.churn import ChurnRate
from pervade.runtime.churn import ChurnHarness
from pervade.runtime.cluster import connect
from pervade.runtime.session import run_job
from pervade.traces import load_churn

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "fact_verification.toml"
WORKERS = 2


def run_once(items: int, churn: Churn | None, folder: Path) -> dict[str, float]:
    source = folder / "claims.jsonl"
    bundled = (ROOT / "src/pervade/apps/fact_verification/data/claims.jsonl").read_text()
    source.write_text("".join(bundled.splitlines(keepends=True)[:items]))
    sections = {
        "job": {
            "app": "fact-verification",
            "input": str(source),
            "output": str(folder / "out.jsonl"),
        },
        "cluster": {"workers": WORKERS},
    }
    plan = build_plan(sections, folder, lambda _text: None)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(connect(None, WORKERS, preload=plan.job.worker_modules))
        harness = None
        if churn is not None:
            harness = stack.enter_context(ChurnHarness(client.cluster, client, churn, WORKERS))
        # A trace may start with fewer workers than the cluster's size, or none.
        client.wait_for_workers(WORKERS if harness is None else _initial(harness))
        started = time.perf_counter()
        stats = run_job(
            client, plan.job, plan.input, plan.parse, plan.output, plan.errors, plan.journal
        )
        wall = time.perf_counter() - started
    results = [json.loads(line) for line in plan.output.read_text().splitlines()]
    assert len({r["id"] for r in results}) == len(results) == items, "lost or duplicated items"
    with contextlib.closing(sqlite3.connect(plan.journal)) as journal:
        # Attempts whose work was lost (not done, not handed back) on workers that drained.
        (redone_graceful,) = journal.execute(
            "SELECT COUNT(DISTINCT a.item_id) FROM attempts a JOIN worker_events w "
            "ON a.worker = w.worker AND w.event = 'drained' WHERE a.ended IS NOT NULL "
            "AND a.outcome NOT IN ('done', 'drained', 'stopped')"
        ).fetchone()
    return {
        "redone_graceful": redone_graceful,
        "wall": wall,
        "hard": stats.hard_evictions,
        "graceful": stats.graceful_evictions,
        "lost": stats.requeued_evicted,
        "handed_back": stats.requeued_graceful,
        "rerun_items": stats.rerun_items,
        "goodput": stats.goodput.share,
        "loading": _share(stats.goodput.loading, stats.goodput.worker_seconds),
        "lost_time": _share(stats.goodput.lost, stats.goodput.worker_seconds),
        "idle": _share(stats.goodput.idle, stats.goodput.worker_seconds),
    }


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _commit() -> str:
    """The checkout's commit, to name the code a table was measured on."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "an unknown commit"


def _initial(harness: ChurnHarness) -> int:
    return harness.trace.initial if harness.trace is not None else harness.workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=360)
    parser.add_argument("--rates", default="0,60,30", help="mean seconds between evictions")
    parser.add_argument("--graceful", type=float, default=0.5)
    parser.add_argument("--seeds", default="1", help="seeds of the rate runs, one run each")
    parser.add_argument(
        "--trace",
        action="append",
        default=[],
        help="also run on an availability trace: trace:NAME_OR_PATH[,start=..][,fit=..]...",
    )
    args = parser.parse_args(argv)
    # Evicted workers make the client's nannies log errors that are expected here.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    runs: list[tuple[str, Churn | None]] = []
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
        if not rate:
            runs.append(("no churn", None))
        for seed in seeds if rate else []:
            poisson = ChurnRate(rate, args.graceful, rejoin_seconds=5.0, seed=seed)
            runs.append((f"{rate:g}, seed {seed}", poisson))
    for spec in args.trace:
        runs.append((spec, load_churn(spec, WORKERS)))  # a bad spec stops before any run
    if not runs:
        parser.error("nothing to run: give --rates, --trace or both")
    print(f"pervade at {_commit()}, {args.items} claims, {WORKERS} workers", flush=True)
    rows = []
    for label, churn in runs:
        with tempfile.TemporaryDirectory(prefix="pervade-churn-") as scratch:
            row = run_once(args.items, churn, Path(scratch))
        rows.append((label, row))
        print(f"{label}: {row['wall']:.1f} s", flush=True)
    base = rows[0][1]["wall"]
    print()
    print(
        "| churn: mean s between evictions per worker, or trace | wall | × first "
        "| evictions hard/graceful | as drawn: s between evictions per worker "
        "| attempts lost | handed back unstarted "
        "| items redone | of them after a graceful eviction | goodput | loading | lost | idle |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        evictions = r["hard"] + r["graceful"]
        # A seeded draw evicts more or less often than its rate says: what this run got.
        drawn = f"{r['wall'] * WORKERS / evictions:.0f}" if evictions else "—"
        print(
            f"| {label} | {r['wall']:.1f} s | {r['wall'] / base:.2f} | "
            f"{r['hard']:.0f}/{r['graceful']:.0f} | {drawn} "
            f"| {r['lost']:.0f} | {r['handed_back']:.0f} "
            f"| {r['rerun_items']:.0f} | {r['redone_graceful']:.0f} "
            f"| {100 * r['goodput']:.0f}% | {100 * r['loading']:.0f}% "
            f"| {100 * r['lost_time']:.0f}% | {100 * r['idle']:.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
