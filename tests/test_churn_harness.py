"""The churn harness keeps the pool at its size, whatever happened to a worker."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster

from pervade.core.churn import ChurnRate
from pervade.runtime.churn import ChurnHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_a_worker_whose_nanny_closed_is_replaced() -> None:
    # A nanny can die or fail to start its worker (a kill that lands while it starts); the
    # harness must replace it, or a long churn run would end with an empty pool.
    quiet = ChurnRate(mean_seconds=1e9, rejoin_seconds=0.0, seed=1)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        with ChurnHarness(cluster, client, quiet, workers=2) as harness:
            assert harness.schedule == [] or harness.schedule[0].at > 1e3
            name, nanny = next(iter(cluster.workers.items()))
            gone = nanny.worker_address
            client.sync(nanny.close)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = set(client.scheduler_info()["workers"])
                if len(live) == 2 and gone not in live:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"pool not refilled: {sorted(client.scheduler_info()['workers'])}")
            time.sleep(2)  # and not over-filled: the closed nanny is not started again
            assert len(client.scheduler_info()["workers"]) == 2
            assert name not in cluster.worker_spec
