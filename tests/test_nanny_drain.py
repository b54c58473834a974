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
ITEMS = 240
TASK_ITEMS = 16
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
    victim_log = tmp_path / f"{victim_pid}.log"
    signalled: list[float] = []
    exited: list[float] = []

    def strike() -> None:
        """SIGTERM the nanny once its worker is well inside a task (the workload logs each
        item it finishes), then note when the process exits."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _mid_task(victim_log, TASK_ITEMS):
            time.sleep(0.01)
        os.kill(nanny.pid, signal.SIGTERM)
        signalled.append(time.monotonic())
        nanny.wait(timeout=GRACE * 2)
        exited.append(time.monotonic())

    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    context = pervade.context(workloads.process_context, args={"tag": "nanny"})
    items = [(f"n{n:03d}", {"n": n}) for n in range(ITEMS)]
    stats_box: list[RunStats] = []
    results: dict[str, pervade.Result] = {}
    accepted: Counter[str] = Counter()
    for result in pervade.map(
        workloads.logged,
        items,
        context=context,
        options={"log_dir": str(tmp_path), "delay": 0.03},
        client=client,
        # Every computation is counted below: no tail copies, which redo items on purpose.
        dispatch=DispatchConfig(
            min_task_items=TASK_ITEMS, max_task_items=TASK_ITEMS, speculate=False
        ),
        observer=stats_box.append,
    ):
        accepted[result.id] += 1
        results[result.id] = result
    striker.join(timeout=GRACE)
    assert signalled, "the nanny was never signalled"
    assert set(accepted) == {i for i, _ in items} and set(accepted.values()) == {1}
    assert all(r.ok for r in results.values())
    computed = Counter(line for log in tmp_path.glob("*.log") for line in log.read_text().split())
    assert max(computed.values()) == 1, "a finished item was computed again"
    victim_items = victim_log.read_text().split()
    assert len(victim_items) % TASK_ITEMS, "the victim stopped its task at a slice, not its end"
    assert all(results[i].value["pid"] == victim_pid for i in victim_items), (
        "every item the victim finished, its running task's included, was accepted from it"
    )
    stats = stats_box[-1]
    assert stats.graceful_evictions == 1 and stats.hard_evictions == 0
    assert stats.requeued_evicted == 0
    assert exited, f"the dask worker process still runs {GRACE} s after SIGTERM"
    assert exited[0] - signalled[0] < GRACE / 3
    assert nanny.returncode == 0
    names = [w["name"] for w in client.scheduler_info()["workers"].values()]
    assert VICTIM not in names, "the nanny restarted its drained worker"


def _mid_task(log: Path, task_items: int) -> bool:
    """Some tasks done, and a few items into the next one."""
    done = len(log.read_text().split()) if log.exists() else 0
    return done > task_items and 3 <= done % task_items <= 6  # inside its first slice
