"""SIGTERM to the nanny of a `dask worker` CLI process (what a batch system signals) drains
its worker: the running task's finished items are accepted, the rest run elsewhere, nothing
is computed twice, and the process exits well within its grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import pervade
from pervade import DispatchConfig
from pervade.runtime.cluster import register_nanny_drain
from pervade.runtime.stats import RunStats
from tests.helpers import workloads
from tests.helpers.jobs import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
ITEMS = 160
GRACE = 60.0  # pervade's default, which pervade.map gives the worker's EvictionPlugin
VICTIM = "cli-victim"


@pytest.fixture
def cluster_and_cli_worker() -> Iterator[tuple[Client, subprocess.Popen[bytes]]]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--name", VICTIM, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            client.wait_for_workers(2, timeout=60)
            yield client, process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _victim_worker_pid(client: Client) -> int:
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    address = next(a for a, name in names.items() if name == VICTIM)
    pid: int = client.run(os.getpid, workers=[address])[address]
    return pid


def test_sigterm_to_the_nanny_drains_its_worker(
    cluster_and_cli_worker: tuple[Client, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    client, nanny = cluster_and_cli_worker
    register_nanny_drain(client, GRACE)
    victim_pid = _victim_worker_pid(client)
    context = pervade.context(workloads.process_context, args={"tag": "nanny"})
    items = [(f"n{n:03d}", {"n": n}) for n in range(ITEMS)]
    stats_box: list[RunStats] = []
    results: dict[str, pervade.Result] = {}
    accepted: Counter[str] = Counter()
    signalled_at = 0.0
    exited_at: list[float] = []

    def watch_exit() -> None:
        nanny.wait(timeout=GRACE * 2)
        exited_at.append(time.monotonic())

    victim_log = tmp_path / f"{victim_pid}.log"
    for result in pervade.map(
        workloads.logged,
        items,
        context=context,
        options={"log_dir": str(tmp_path), "delay": 0.02},
        client=client,
        dispatch=DispatchConfig(min_task_items=16, max_task_items=16),
        observer=stats_box.append,
    ):
        accepted[result.id] += 1
        results[result.id] = result
        # Mid-task on the victim: it has logged items that are not all a whole task.
        if not signalled_at and len(results) >= ITEMS // 4 and _mid_task(victim_log, 16):
            os.kill(nanny.pid, signal.SIGTERM)
            signalled_at = time.monotonic()
            threading.Thread(target=watch_exit, daemon=True).start()
    assert signalled_at, "the run ended before the nanny was signalled"
    assert set(accepted) == {i for i, _ in items} and set(accepted.values()) == {1}
    assert all(r.ok for r in results.values())
    computed = Counter(line for log in tmp_path.glob("*.log") for line in log.read_text().split())
    assert max(computed.values()) == 1, "a finished item was computed again"
    victim_items = victim_log.read_text().split()
    assert victim_items and all(results[i].value["pid"] == victim_pid for i in victim_items), (
        "every item the victim finished, its running task's included, was accepted from it"
    )
    stats = stats_box[-1]
    assert stats.graceful_evictions == 1 and stats.hard_evictions == 0
    assert stats.requeued_evicted == 0
    deadline = time.monotonic() + GRACE
    while not exited_at and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exited_at, f"the dask worker process still runs {GRACE} s after SIGTERM"
    assert exited_at[0] - signalled_at < GRACE / 3
    assert nanny.returncode == 0
    names = [w["name"] for w in client.scheduler_info()["workers"].values()]
    assert VICTIM not in names, "the nanny restarted its drained worker"


def _mid_task(log: Path, task_items: int) -> bool:
    done = len(log.read_text().split()) if log.exists() else 0
    return done > 0 and done % task_items not in (0, task_items - 1)
