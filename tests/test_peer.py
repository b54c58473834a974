"""Peer transfer of artifacts between real Dask workers, and the origin-reader limit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from pervade.worker.peer import (
    DONE_OP,
    LOAD_OP,
    MANIFEST_OP,
    PeerPlugin,
    WorkerRoots,
    origin_readers,
)
from pervade.worker.peer_pull import MiB, PeerPullError, PullStats, pull
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

CHUNK = 1 * MiB
# A file of many chunks, one in a subfolder not a multiple of the chunk, one smaller than a
# chunk and an empty one.
SIZES = {"model.bin": 20 * MiB + 123, "sub/tokenizer.bin": 9 * MiB + 7, "small.txt": 1000}
FILES = {name: os.urandom(size) for name, size in SIZES.items()} | {"empty": b""}
DIGEST = hashlib.sha256(
    b"".join(hashlib.sha256(data).digest() for _, data in sorted(FILES.items()))
).hexdigest()
TOTAL_CHUNKS = sum(-(-len(data) // CHUNK) for data in FILES.values())


def write_entry(root: Path, files: dict[str, bytes] = FILES) -> None:
    """An entry of the DISK tier's layout: files first, the manifest last."""
    entry = root / DIGEST
    for name, data in files.items():
        (entry / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / name).write_bytes(data)
    manifest = {
        "digest": DIGEST,
        "kind": "folder",
        "files": [
            {"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in files.items()
        ],
    }
    (root / f"{DIGEST}.json").write_text(json.dumps(manifest))


def assert_copied(dest: Path) -> None:
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data, name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    base = tmp_path_factory.mktemp("caches")
    with (
        LocalCluster(n_workers=3, threads_per_worker=2, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        c.wait_for_workers(3)
        c.register_plugin(PeerPlugin(WorkerRoots(base)))
        yield c, base


class Peers:
    """The cluster as a test sees it: worker addresses and processes by worker name."""

    def __init__(self, client: Client, base: Path) -> None:
        self.client, self.base = client, base

        def ready() -> bool:
            # A worker killed by an earlier test comes back under the same name.
            workers = client.scheduler_info()["workers"]
            self.addr = {str(w["name"]): a for a, w in workers.items()}
            if sorted(self.addr) != ["0", "1", "2"]:
                return False
            try:
                loads = asyncio.run(self.loads())
            except Exception:
                return False
            return len(loads) == 3

        wait_until(ready, 60, "three workers with the peer handlers")
        self.pid: dict[str, int] = {
            str(n): client.run(os.getpid, workers=[a])[a] for n, a in self.addr.items()
        }
        for name in self.addr:
            cache = base / name
            shutil.rmtree(cache / DIGEST, ignore_errors=True)
            (cache / f"{DIGEST}.json").unlink(missing_ok=True)

    @contextlib.contextmanager
    def busy(self, name: str) -> Iterator[None]:
        """Worker `name` serves another pull for a while (it then looks more loaded)."""
        from distributed.core import rpc

        async def call(op: str, **kwargs: Any) -> Any:
            async with rpc(self.addr[name]) as r:
                return await getattr(r, op)(pull_id="someone-else", **kwargs)

        assert asyncio.run(call(MANIFEST_OP, digest=DIGEST))
        try:
            yield
        finally:
            asyncio.run(call(DONE_OP))

    def hold(self, *names: str) -> None:
        for name in names:
            write_entry(self.base / name)

    async def loads(self, *names: str) -> dict[str, dict[str, int]]:
        from distributed.core import rpc

        out = {}
        for name in names or self.addr:
            async with rpc(self.addr[name]) as r:
                out[name] = await asyncio.wait_for(getattr(r, LOAD_OP)(), 5)
        return out


@pytest.fixture
def peers(cluster: tuple[Client, Path]) -> Peers:
    return Peers(*cluster)


def run_pull(sources: list[str], dest: Path, **kwargs: Any) -> PullStats:
    return asyncio.run(pull(sources, DIGEST, dest, chunk=CHUNK, **kwargs))


def test_pull_from_one_peer_is_complete_and_verified(peers: Peers, tmp_path: Path) -> None:
    peers.hold("0")
    stats = run_pull([peers.addr["0"]], tmp_path)
    assert_copied(tmp_path)
    assert stats.sources == (peers.addr["0"],)
    assert stats.chunks == TOTAL_CHUNKS and stats.refetched == 0
    assert stats.bytes == sum(SIZES.values())


def test_a_worker_pulls_on_its_own_event_loop(peers: Peers, tmp_path: Path) -> None:
    peers.hold("0")
    source, puller = peers.addr["0"], peers.addr["2"]

    async def pull_here(dask_worker: Any) -> tuple[str, ...]:
        stats = await pull([source], DIGEST, tmp_path, pool=dask_worker.rpc)
        return stats.sources

    assert peers.client.run(pull_here, workers=[puller])[puller] == (source,)
    assert_copied(tmp_path)


def test_pull_takes_the_least_loaded_holder(peers: Peers, tmp_path: Path) -> None:
    peers.hold("0", "1")
    with peers.busy("0"):
        before = asyncio.run(peers.loads())
        assert before["0"]["pulls"] == 1 and before["1"]["pulls"] == 0
        stats = run_pull([peers.addr["0"], peers.addr["1"]], tmp_path)
    assert stats.sources == (peers.addr["1"],)
    assert_copied(tmp_path)
    after = asyncio.run(peers.loads())
    assert after["0"]["chunks_served"] == before["0"]["chunks_served"]
    assert after["1"]["chunks_served"] - before["1"]["chunks_served"] == TOTAL_CHUNKS
    assert after["1"]["pulls"] == 0  # the pull said it was done


def interrupt_at_half(source: str, sig: signal.Signals, pid: int) -> tuple[Any, list[int]]:
    """A progress callback that signals `pid` once half the chunks came from `source`."""
    done_from = [0]

    def progress(src: str, done: int, total: int) -> None:
        if src == source:
            done_from[0] += 1
            if done_from[0] == total // 2:
                os.kill(pid, sig)

    return progress, done_from


@pytest.mark.timeout(120)
def test_killed_holder_is_replaced_without_refetching_done_chunks(
    peers: Peers, tmp_path: Path
) -> None:
    peers.hold("0", "1")
    a, b = peers.addr["0"], peers.addr["1"]
    b_before = asyncio.run(peers.loads("1"))["1"]["chunks_served"]
    progress, from_a = interrupt_at_half(a, signal.SIGKILL, peers.pid["0"])
    stats = run_pull([a, b], tmp_path, progress=progress, timeout=10)
    assert stats.sources == (a, b)
    assert_copied(tmp_path)
    assert from_a[0] >= TOTAL_CHUNKS // 2
    b_served = asyncio.run(peers.loads("1"))["1"]["chunks_served"] - b_before
    # b sent exactly the chunks a had not completed: nothing done was fetched twice.
    assert b_served == TOTAL_CHUNKS - from_a[0]
    assert stats.refetched <= 4  # only the requests in flight when a died


@pytest.mark.timeout(120)
def test_frozen_holder_is_replaced_within_the_timeout(peers: Peers, tmp_path: Path) -> None:
    peers.hold("0", "1")
    a, b = peers.addr["0"], peers.addr["1"]
    progress, _ = interrupt_at_half(a, signal.SIGSTOP, peers.pid["0"])
    started = time.monotonic()
    try:
        stats = run_pull([a, b], tmp_path, progress=progress, timeout=2)
    finally:
        os.kill(peers.pid["0"], signal.SIGCONT)
    assert stats.sources == (a, b)
    assert_copied(tmp_path)
    assert stats.refetched <= 4
    # One timeout for the frozen requests, one for the "done" notice it never answers.
    assert time.monotonic() - started < 30


def test_corrupt_holder_fails_verification_or_falls_back(peers: Peers, tmp_path: Path) -> None:
    peers.hold("1", "2")
    bad = bytearray(FILES["sub/tokenizer.bin"])
    bad[len(bad) // 2] ^= 0xFF
    (peers.base / "2" / DIGEST / "sub/tokenizer.bin").write_bytes(bad)
    a, b = peers.addr["2"], peers.addr["1"]

    with pytest.raises(PeerPullError) as err:
        run_pull([a], tmp_path / "only-bad")
    message = str(err.value)
    assert DIGEST in message and "sub/tokenizer.bin" in message and "sha256" in message

    unchecked = run_pull([a], tmp_path / "unchecked", verify=False)
    assert unchecked.sources == (a,)
    assert (tmp_path / "unchecked" / "sub/tokenizer.bin").read_bytes() == bad

    with peers.busy("1"):  # so that the bad holder is asked first
        stats = run_pull([a, b], tmp_path / "fallback")
    assert stats.sources == (a, b)
    assert_copied(tmp_path / "fallback")
    # Only the file that failed its sha256 was fetched again.
    assert stats.refetched == -(-SIZES["sub/tokenizer.bin"] // CHUNK)
    assert stats.chunks == TOTAL_CHUNKS + stats.refetched


def test_no_holder_names_digest_and_sources(peers: Peers, tmp_path: Path) -> None:
    with pytest.raises(PeerPullError) as err:
        run_pull([peers.addr["0"], "tcp://127.0.0.1:1"], tmp_path, timeout=2)
    message = str(err.value)
    assert DIGEST in message and "does not hold it" in message and "tcp://127.0.0.1:1" in message


def hold_origin_lease(path: str, index: int) -> None:
    with origin_readers(scope="test-origin", max_leases=2):
        # Each holder notes its entry and leaves a moment later; the file shows overlaps.
        with open(path, "a") as f:
            f.write(f"+{index} {time.time()}\n")
        time.sleep(0.3)
        with open(path, "a") as f:
            f.write(f"-{index} {time.time()}\n")


def test_origin_readers_limit_concurrent_holders(
    cluster: tuple[Client, Path], tmp_path: Path
) -> None:
    client, _ = cluster
    log = tmp_path / "leases.log"
    futures = [
        client.submit(hold_origin_lease, str(log), i, key=f"origin-lease-{i}-{uuid.uuid4()}")
        for i in range(6)
    ]
    client.gather(futures, errors="raise")
    held, peak = 0, 0
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 12
    for sign, _ in sorted(events, key=lambda e: float(e[1])):
        held += 1 if sign.startswith("+") else -1
        peak = max(peak, held)
    # Six acquirers on six threads at once: the limit, not the pool, kept it to two.
    assert peak == 2


@pytest.mark.timeout(10)
def test_chunk_buffers_are_reused_only_once_no_reply_holds_them() -> None:
    from pervade.worker.peer import _Buffers

    buffers = _Buffers()
    sending = buffers.take(10)
    other = buffers.take(10)
    assert sending.obj is not other.obj  # still referenced by a reply: a new buffer
    first = id(sending.obj)
    del sending
    again = buffers.take(6)
    assert id(again.obj) == first and again.nbytes == 6
