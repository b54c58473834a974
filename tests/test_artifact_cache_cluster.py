"""The artifact disk cache under a real LocalCluster: the journal tells where loads came from."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import pervade
from tests.helpers import cached_artifacts

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def loads(journal: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT tier, bytes FROM context_loads ORDER BY at, rowid").fetchall()
    return [(str(tier), int(moved)) for tier, moved in rows]


def test_first_load_copies_from_origin_and_later_ones_hit_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "artifacts"
    # Worker processes inherit these: they all share one node-local cache directory.
    monkeypatch.setenv("PERVADE_ARTIFACT_CACHE", str(cache))
    monkeypatch.setenv("PERVADE_CACHE", str(tmp_path / "pervade"))
    # The DISK tier alone: with the HOST (tmpfs) tier on, later loads would hit HOST.
    monkeypatch.setenv("PERVADE_HOST_CACHE_LIMIT", "0")
    weights = tmp_path / "origin" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * 400)
    context = pervade.context(cached_artifacts.read_weights, artifacts={"weights": weights})
    digest = context.artifacts[0].digest
    items = [(f"i{n}", {"n": n}) for n in range(40)]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        first = tmp_path / "first.sqlite"
        results = list(
            pervade.map(
                cached_artifacts.where, items, context=context, client=client, journal=first
            )
        )
        assert len(results) == 40 and all(r.ok for r in results)
        assert {r.value["path"] for r in results} == {str(cache / digest / "weights.bin")}
        assert {r.value["size"] for r in results} == {102_400}
        recorded = loads(first)
        # Two workers may build at once: one copies while the other waits for its copy, and
        # their reports reach the driver in either order.
        assert sorted(recorded, reverse=True)[0] == ("origin", 102_400)
        assert all(load == ("disk", 0) for load in sorted(recorded, reverse=True)[1:])
        assert (cache / f"{digest}.json").is_file()

        # New worker processes, same node: every load now comes from the disk cache.
        client.restart()
        client.wait_for_workers(2)
        second = tmp_path / "second.sqlite"
        again = list(
            pervade.map(
                cached_artifacts.where, items, context=context, client=client, journal=second
            )
        )
        assert len(again) == 40 and all(r.ok for r in again)
        recorded = loads(second)
        assert recorded
        assert all(load == ("disk", 0) for load in recorded)
