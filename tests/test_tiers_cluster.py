"""The staging chain on a real LocalCluster: HOST, DISK, PEER and ORIGIN tiers.

Every worker has caches of its own (as if on a node of its own), so a worker that lacks an
artifact either pulls it from a peer or reads the origin. Loads report their tier in the
context-state events; those tell how often the origin was read.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from pervade.core import ContextSpec
from pervade.runtime.artifacts import artifact
from pervade.worker.holders import HOLDERS_KEY
from pervade.worker.plugin import STATE_TOPIC
from pervade.worker.prefetch import prefetch_context
from tests.helpers import tiers
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

MiB = 1 << 20


class Nodes:
    def __init__(self, client: Client, base: Path) -> None:
        self.client, self.base = client, base

    def addr(self) -> dict[str, str]:
        """Worker address by name, once all three are up with the plugin."""

        def ready() -> bool:
            workers = self.client.scheduler_info()["workers"]
            return len(workers) == 3

        wait_until(ready, 60, "three workers")
        workers = self.client.scheduler_info()["workers"]
        return {str(w["name"]): a for a, w in workers.items()}

    def spec(self, tmp_path: Path, sizes: tuple[int, ...] = (3 * MiB, 2 * MiB + 17)) -> ContextSpec:
        """A context over a folder of random files, new to every cache."""
        folder = tmp_path / f"model-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        for n, size in enumerate(sizes):
            (folder / f"part{n}.bin").write_bytes(os.urandom(size))
        return ContextSpec(
            "tests.helpers.loaders:build", {"key": folder.name}, (artifact("model", folder),)
        )

    def load(self, spec: ContextSpec, *names: str) -> list[dict[str, Any]]:
        """Build `spec` on the named workers at once; the loaders' values."""
        addr = self.addr()
        futures = [
            self.client.submit(
                tiers.load, spec, workers=[addr[n]], allow_other_workers=False, pure=False
            )
            for n in names
        ]
        return list(self.client.gather(futures))

    def tiers(self, spec: ContextSpec) -> list[str]:
        """The tier of every warm report of `spec` so far, in order."""
        events = self.client.get_events(STATE_TOPIC)
        return [
            m["tier"]
            for _, m in events
            if m["context"] == spec.id and m["state"] == "warm" and "tier" in m
        ]

    def host_entry(self, name: str, spec: ContextSpec) -> Path:
        return self.base / name / "host" / spec.artifacts[0].digest


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("nodes")
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(3)
        client.register_plugin(tiers.NodePerWorkerPlugin(str(base)))
        yield Nodes(client, base)


def assert_same_files(value: dict[str, Any], spec: ContextSpec) -> None:
    local, origin = Path(value["model"]), Path(spec.artifacts[0].uri)
    for file in origin.iterdir():
        assert (local / file.name).read_bytes() == file.read_bytes(), file.name


def test_workers_starting_together_read_the_origin_once(nodes: Nodes, tmp_path: Path) -> None:
    spec = nodes.spec(tmp_path)
    values = nodes.load(spec, "0", "1", "2")
    for value in values:
        assert_same_files(value, spec)
        # The loader gets the HOST copy.
        assert Path(value["model"]).parent.name == "host"
    assert sorted(nodes.tiers(spec)) == ["origin", "peer", "peer"]
    # Every worker published its copy; a worker sees the others, not itself, and not an
    # address the scheduler does not know (a worker gone, say), even the most recent one.
    digest, addr = spec.artifacts[0].digest, nodes.addr()
    nodes.client.set_metadata([HOLDERS_KEY, digest, "tcp://127.0.0.1:1"], time.time() + 60)
    seen = nodes.client.submit(
        tiers.holders, digest, workers=[addr["2"]], allow_other_workers=False, pure=False
    ).result()
    assert sorted(seen) == sorted([addr["0"], addr["1"]])
    # Loaded again on a worker that holds it: a HOST hit.
    nodes.client.run(tiers.drop, context=spec.id, workers=[nodes.addr()["1"]])
    nodes.load(spec, "1")
    assert nodes.tiers(spec)[-1] == "host"


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_peer_lost_mid_transfer_is_replaced(nodes: Nodes, tmp_path: Path, how: str) -> None:
    spec = nodes.spec(tmp_path, (4 * MiB, 3 * MiB))  # 7 chunks of 1 MiB
    # Two holders; "0" published last, so the puller asks it first.
    nodes.load(spec, "1")
    nodes.load(spec, "0")
    assert nodes.tiers(spec) == ["origin", "peer"]
    addr = nodes.addr()
    pids = nodes.client.run(tiers.fail_serving_after, chunks=2, how=how, workers=[addr["0"]])
    pid = pids[addr["0"]]
    started = time.monotonic()
    try:
        (value,) = nodes.load(spec, "2")
    finally:
        if how == "freeze":
            os.kill(pid, signal.SIGCONT)
    assert_same_files(value, spec)
    if how == "freeze":
        # It was asked for the chunk it froze on; the pull waited one timeout (3 s) for it.
        asked = nodes.client.run(tiers.chunk_requests, workers=[addr["0"]])[addr["0"]]
        assert asked >= 3
        assert time.monotonic() - started < 30
    # The pull went on from the other holder: still no second origin read.
    assert nodes.tiers(spec) == ["origin", "peer", "peer"]
    if how == "kill":
        # The nanny starts a new "0"; the next test needs it.
        wait_until(lambda: nodes.addr().get("0") not in (None, addr["0"]), 60, "a new worker 0")


def test_a_corrupt_host_copy_is_found_and_replaced(nodes: Nodes, tmp_path: Path) -> None:
    spec = nodes.spec(tmp_path)
    nodes.load(spec, "2")
    part = nodes.host_entry("2", spec) / "part0.bin"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a re-hash finds it
    part.write_bytes(data)
    nodes.client.run(tiers.drop, context=spec.id, workers=[nodes.addr()["2"]])
    (value,) = nodes.load(spec, "2")
    assert_same_files(value, spec)
    assert Path(value["model"]) == nodes.host_entry("2", spec)
    # The HOST copy was bad, the DISK one good: the bytes came from DISK.
    assert nodes.tiers(spec) == ["origin", "disk"]


def test_a_restarted_worker_reloads_from_host(nodes: Nodes, tmp_path: Path) -> None:
    spec = nodes.spec(tmp_path)
    nodes.load(spec, "1")
    before = nodes.addr()["1"]
    pid = nodes.client.run(os.getpid, workers=[before])[before]
    nodes.client.restart_workers([before])
    after = nodes.addr()["1"]
    assert nodes.client.run(os.getpid, workers=[after])[after] != pid
    (value,) = nodes.load(spec, "1")
    assert_same_files(value, spec)
    assert nodes.tiers(spec) == ["origin", "host"]


def test_a_prefetch_stages_from_the_origin_then_from_a_peer(nodes: Nodes, tmp_path: Path) -> None:
    spec = nodes.spec(tmp_path)
    addr = nodes.addr()

    def staged() -> list[str]:
        events = nodes.client.get_events(STATE_TOPIC)
        return [m["tier"] for _, m in events if m["context"] == spec.id and m["state"] == "staged"]

    # Client.run calls it on the worker's event loop: it returns at once, a thread copies.
    for n, name in enumerate(["0", "1"]):
        started = nodes.client.run(prefetch_context, spec, workers=[addr[name]])
        assert started == {addr[name]: None}
        wait_until(lambda n=n: len(staged()) > n, 60, f"worker {name} to report staged")
    assert staged() == ["origin", "peer"]
    assert nodes.tiers(spec) == []  # staged, never built
    (value,) = nodes.load(spec, "1")
    assert_same_files(value, spec)
    assert nodes.tiers(spec) == ["host"]


def test_the_only_holder_lost_mid_transfer_means_the_origin(nodes: Nodes, tmp_path: Path) -> None:
    spec = nodes.spec(tmp_path, (4 * MiB, 3 * MiB))
    nodes.load(spec, "0")
    addr = nodes.addr()
    nodes.client.run(tiers.fail_serving_after, chunks=2, how="kill", workers=[addr["0"]])
    (value,) = nodes.load(spec, "2")
    assert_same_files(value, spec)
    assert nodes.tiers(spec) == ["origin", "origin"]
    wait_until(lambda: nodes.addr().get("0") not in (None, addr["0"]), 60, "a new worker 0")
