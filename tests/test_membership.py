"""The driver's view of which workers exist must not depend on the client's shared cache,
which the client's periodic callback refreshes without the per-worker part."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from distributed import Client, LocalCluster

from pervade.runtime.membership import worker_addresses

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


@pytest.fixture
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2)
        yield c


def test_workers_are_seen_even_when_the_periodic_refresh_lands_in_between(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refresh_without_workers(**_: Any) -> None:
        # What the periodic callback leaves behind: totals, no per-worker information.
        assert client.scheduler is not None
        client._scheduler_identity = await client.scheduler.identity(n_workers=0)

    monkeypatch.setattr(client, "_update_scheduler_info", refresh_without_workers)
    assert client.scheduler_info()["workers"] == {}  # the cache: everyone looks gone
    assert len(worker_addresses(client)) == 2  # a fresh question: both are there
