"""Table 2 of bench/tiers.py: the origin bytes read when N worker processes start the same
context at once, with DISK and HOST caches shared (one node) or one per worker (N nodes)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pervade
import workloads
from pervade.core.config import DispatchConfig
from pervade.core.states import ContextState
from pervade.worker.plugin import STATE_TOPIC
from tiers_files import GB


def start_cluster(envs: list[dict[str, str]]) -> Any:
    """N single-threaded worker processes; a LocalCluster where they share one environment,
    else the same nannies from a SpecCluster, each with its own."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if all(env == envs[0] for env in envs):
        return LocalCluster(
            n_workers=len(envs),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=envs[0],
        )
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={
            i: {"cls": Nanny, "options": {"nthreads": 1, "env": env}} for i, env in enumerate(envs)
        },
    )


def origin_row(
    workers: int, context: pervade.ContextSpec, host_root: Path, size: int, shared: bool
) -> str:
    from distributed import Client

    from pervade.runtime.cluster import worker_environment

    with (
        tempfile.TemporaryDirectory(prefix="pervade-tiers-") as tmp,
        tempfile.TemporaryDirectory(prefix="pervade-tiers-host-", dir=host_root) as host,
    ):
        envs = []
        for i in range(workers):
            env = {str(k): str(v) for k, v in worker_environment(workers).items()}
            where = "node" if shared else f"node{i}"
            env["PERVADE_ARTIFACT_CACHE"] = str(Path(tmp) / where / "disk")
            env["PERVADE_HOST_CACHE"] = str(Path(host) / where / "host")
            envs.append(env)
        journal = Path(tmp) / "journal.sqlite"
        # Tasks of one item that keep a worker busy for a second: a backlog of 16 s for each
        # worker, more than a cold build costs, so that every worker builds the context.
        dispatch = DispatchConfig(min_task_items=1, max_task_items=1, max_in_flight=1)
        items = [(f"i{i}", {"n": i}) for i in range(16 * workers)]
        with start_cluster(envs) as cluster, Client(cluster) as client:
            client.wait_for_workers(workers)
            client.run(workloads.warm_imports)
            began = time.perf_counter()
            done = sum(
                1
                for _ in pervade.map(
                    "tiers:hold",
                    items,
                    context=context,
                    options={"seconds": 1.0},
                    client=client,
                    dispatch=dispatch,
                    journal=journal,
                )
            )
            seconds = time.perf_counter() - began
            # Every state change the workers reported, prefetches (STAGED) included: the
            # journal records the loads that made a context warm, not the prefetches.
            reports = [m for _, m in client.get_events(STATE_TOPIC) if "tier" in m]
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            loads = db.execute("SELECT worker, tier, bytes FROM context_loads").fetchall()
    if done != len(items):
        raise RuntimeError(f"{workers} workers: {done} of {len(items)} items came back")
    origin_loads = sum(int(b) for _, tier, b in loads if tier == "origin")
    origin = sum(int(m.get("bytes") or 0) for m in reports if m["tier"] == "origin")
    if origin < origin_loads:
        raise RuntimeError("the workers reported fewer origin bytes than the journal holds")
    mix = ", ".join(f"{t} {n}" for t, n in sorted(Counter(str(t) for _, t, _ in loads).items()))
    staged = [m for m in reports if m["state"] == ContextState.STAGED.value]
    if staged:
        mix += "; prefetched: " + ", ".join(
            f"{t} {n}" for t, n in sorted(Counter(str(m["tier"]) for m in staged).items())
        )
    caches = "one, shared" if shared else "one per worker"
    return (
        f"| {workers} | {caches} | {len({w for w, _, _ in loads})} | {origin / GB:.3f} |"
        f" {origin / size:.2f}x | {mix} | {seconds:.1f} |"
    )


def origin_table(
    counts: list[int], name: str, folder: Path, device: str, host_root: Path
) -> list[str]:
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    context = pervade.llm(str(folder), device=device)
    out = [
        f'Origin: the folder of the {name}, {size / GB:.3f} GB (all its files). Caches "one,'
        ' shared": the workers share one DISK and one HOST cache directory, as the processes'
        ' of one node do; "one per worker": each has its own, as on separate nodes. Target'
        " for 8 workers: origin bytes <= 1.1x the model.",
        "",
        "| workers | DISK/HOST caches | workers that loaded | origin GB | origin / model |"
        " where loads found the model | seconds |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for n in counts:
        for shared in (True, False):
            if n == 1 and not shared:
                continue  # the same thing
            out.append(origin_row(n, context, host_root, size, shared))
            print(out[-1], flush=True)
    return out
