"""The churn harness keeps the pool at its size, whatever happened to a worker."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster
from distributed.core import Status

from pervade.core.availability import Availability, TraceChurn
from pervade.core.churn import ChurnRate, ChurnTrace
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


class _Nanny:
    def __init__(self, address: str) -> None:
        self.worker_address = address
        self.status = Status.running
        self.pid = 1


class _Cluster:
    """The parts of a LocalCluster the harness's pool keeping reads and writes."""

    def __init__(self, names: list[str]) -> None:
        self.workers = {name: _Nanny(f"tcp://{name}") for name in names}
        self.worker_spec: dict[str, object] = {name: {} for name in names}
        self.new_spec: dict[str, object] = {}
        self.scaled: list[int] = []

    def scale(self, n: int) -> None:
        self.scaled.append(n)


def test_no_new_worker_starts_while_a_drained_one_is_still_leaving() -> None:
    # On a node with one GPU per worker, a newcomer started beside a worker that is still
    # draining would find every GPU taken and share one for the rest of the run.
    trace = ChurnTrace("bamboo-p3", speed=1.0, graceful=1.0, seed=1)
    cluster = _Cluster(["a", "b"])
    churn = TraceChurn(trace, Availability((0.0,), (2,), 1.0))
    harness = ChurnHarness(cluster, None, churn, workers=2)  # type: ignore[arg-type]
    harness._target = 2
    harness._signalled.add("tcp://a")  # told to leave: out of the pool, still draining
    harness._refill(0.0)
    assert harness.joins == [] and cluster.scaled == []
    cluster.workers["a"].status = Status.closed  # its process is gone: the slot is free
    harness._refill(1.0)
    assert [j.at for j in harness.joins] == [1.0]
    assert cluster.scaled == [2] and "churn-1" in cluster.worker_spec
