"""Two models on one worker whose device budget holds one: the second build demotes the
first to the HOST tier, and the first comes back from there, not from its origin."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import pervade
from pervade.worker.plugin import STATE_TOPIC
from tests.helpers import cached_artifacts
from tests.test_artifact_cache_cluster import loads

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
SIZE = 102_400  # bytes of each model's weights


def test_a_second_model_demotes_the_first_to_the_host_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker processes inherit these: caches of this test alone, room for one model live.
    monkeypatch.setenv("PERVADE_ARTIFACT_CACHE", str(tmp_path / "disk"))
    monkeypatch.setenv("PERVADE_HOST_CACHE", str(tmp_path / "host"))
    monkeypatch.setenv("PERVADE_HOST_CACHE_LIMIT", "10MB")
    monkeypatch.setenv("PERVADE_CACHE", str(tmp_path / "pervade"))
    monkeypatch.setenv("PERVADE_DEVICE_MEMORY", str(SIZE * 3 // 2))
    models = {}
    for name, fill in (("a", b"a"), ("b", b"b")):
        weights = tmp_path / "origin" / name / "weights.bin"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(fill * SIZE)
        models[name] = pervade.context(
            cached_artifacts.read_weights, artifacts={"weights": weights}, label=name
        )
    items = [(f"i{n}", {"n": n}) for n in range(8)]

    def run(name: str) -> list[tuple[str, int]]:
        journal = tmp_path / f"{name}-{len(list(tmp_path.glob('*.sqlite')))}.sqlite"
        results = list(
            pervade.map(
                cached_artifacts.where,
                items,
                context=models[name],
                client=client,
                journal=journal,
            )
        )
        assert len(results) == len(items) and all(r.ok for r in results)
        return loads(journal)

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(1)
        assert run("a") == [("origin", SIZE)]
        assert run("b") == [("origin", SIZE)]
        reports = [message for _, message in client.get_events(STATE_TOPIC)]
        a_id = models["a"].id
        staged = [m for m in reports if m["context"] == a_id and m["state"] == "staged"]
        assert [m.get("tier") for m in staged] == ["host"], "a was demoted, its files kept"
        assert run("a") == [("host", 0)], "a came back from the HOST tier"
        states = client.run(_states)
        assert list(states.values()) == [{a_id: "warm", models["b"].id: "staged"}]


def _states(dask_worker: object) -> dict[str, str]:
    from pervade.worker.plugin import context_host

    return {cid: state.value for cid, state in context_host(dask_worker).states().items()}
