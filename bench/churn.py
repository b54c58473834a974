"""The bundled job under churn: what evictions cost on the local cluster.

    .venv/bin/python bench/churn.py [--items 360] [--rates 0,60,30] [--graceful 0.5]

For each mean time between evictions per worker (0 = no churn) the bundled fact-verification
job runs on a fresh local cluster of 2 workers while the churn harness evicts and replaces
workers (half of them gracefully by default, seed 1). Printed per run: wall time and its
ratio to the run without churn, evictions, item attempts lost to evictions without notice,
unstarted items handed back by draining workers, items that ran more than once (a started
attempt lost with a worker, then run again), and goodput
(inference seconds of accepted results over the pool's worker-seconds).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from pervade.cli.plan import build_plan
from pervade.core.churn import ChurnRate
from pervade.runtime.cluster import connect
from pervade.runtime.session import run_job

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "fact_verification.toml"
WORKERS = 2


def run_once(items: int, mtbe: float, graceful: float, folder: Path) -> dict[str, float]:
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
    churn = ChurnRate(mtbe, graceful, rejoin_seconds=5.0, seed=1) if mtbe else None
    with connect(None, WORKERS, churn=churn) as client:
        client.wait_for_workers(WORKERS)
        started = time.perf_counter()
        stats = run_job(
            client, plan.job, plan.input, plan.parse, plan.output, plan.errors, plan.journal
        )
        wall = time.perf_counter() - started
    with sqlite3.connect(plan.journal) as db:
        per_item = db.execute(
            "SELECT COUNT(*) FROM (SELECT item_id FROM attempts WHERE outcome IN "
            "('done', 'evicted') GROUP BY item_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    results = [json.loads(line) for line in plan.output.read_text().splitlines()]
    assert len({r["id"] for r in results}) == len(results) == items, "lost or duplicated items"
    return {
        "wall": wall,
        "hard": stats.hard_evictions,
        "graceful": stats.graceful_evictions,
        "lost": stats.requeued_evicted,
        "handed_back": stats.requeued_graceful,
        "rerun_items": per_item,
        "goodput": stats.infer_seconds / (WORKERS * wall),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=360)
    parser.add_argument("--rates", default="0,60,30", help="mean seconds between evictions")
    parser.add_argument("--graceful", type=float, default=0.5)
    args = parser.parse_args(argv)
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        with tempfile.TemporaryDirectory(prefix="pervade-churn-") as scratch:
            row = run_once(args.items, rate, args.graceful, Path(scratch))
        rows.append((rate, row))
        print(f"mtbe {rate:g}: {row['wall']:.1f} s", flush=True)
    base = rows[0][1]["wall"]
    print()
    print(
        "| mean s between evictions per worker | wall | × no churn | evictions hard/graceful "
        "| attempts lost | handed back unstarted | items computed twice | goodput |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate, r in rows:
        label = "no churn" if not rate else f"{rate:g}"
        print(
            f"| {label} | {r['wall']:.1f} s | {r['wall'] / base:.2f} | "
            f"{r['hard']:.0f}/{r['graceful']:.0f} | {r['lost']:.0f} | {r['handed_back']:.0f} "
            f"| {r['rerun_items']:.0f} | {100 * r['goodput']:.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
