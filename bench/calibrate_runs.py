"""The real side of bench/calibrate.py: the bundled job on a fresh local cluster, with or
without churn, and the facts its journal holds (makespan, loads, worker events, tasks)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import time
import tomllib
from pathlib import Path
from typing import Any

from pervade.cli.plan import build_plan
from pervade.core.churn import ChurnRate
from pervade.runtime.churn import ChurnHarness
from pervade.runtime.cluster import connect
from pervade.runtime.membership import worker_addresses
from pervade.runtime.session import run_job

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "fact_verification.toml"
WORKERS = 2


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
