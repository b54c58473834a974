"""The staging chain (HOST -> DISK -> PEER -> ORIGIN) without Dask: the cluster is a fake
`Remote` whose peer is another cache on this machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pervade.core import Artifact
from pervade.core.cache_policy import Tier
from pervade.runtime.artifacts import artifact
from pervade.storage.cache import ArtifactCache
from pervade.storage.host import HOST_CACHE_ENV, HOST_LIMIT_ENV, host_cache
from pervade.storage.sources import CopySource, Source
from pervade.worker.staging import StagingChain


class FakeRemote:
    """Holders and a peer copy from `peer` (another cache); every call is logged."""

    def __init__(
        self, peer: ArtifactCache | None = None, holders: tuple[list[str], ...] = ()
    ) -> None:
        self.peer = peer
        self.answers = list(holders)  # what each holders() call says, the last one repeated
        self.log: list[str] = []
        self.leased = False
        self.peer_fails = False

    def holders(self, digest: str) -> list[str]:
        said = self.answers.pop(0) if len(self.answers) > 1 else (self.answers or [[]])[0]
        self.log.append(f"holders {said}")
        return said

    def peer_source(self, artifact: Artifact, holders: list[str]) -> Source:
        self.log.append("pull")
        if self.peer_fails or self.peer is None:
            raise RuntimeError("every peer failed")
        manifest = self.peer.manifest(artifact.digest)
        assert manifest is not None
        return CopySource(self.peer.entry_path(artifact.digest), manifest, Tier.PEER)

    @contextlib.contextmanager
    def origin_lease(self, digest: str) -> Iterator[None]:
        self.log.append("lease")
        self.leased = True
        try:
            yield
        finally:
            self.leased = False
            self.log.append("release")

    def publish(self, digest: str) -> None:
        self.log.append("publish in lease" if self.leased else "publish")


@pytest.fixture
def weights(tmp_path: Path) -> Artifact:
    folder = tmp_path / "origin" / "model"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(bytes(range(256)) * 40)
    (folder / "b.bin").write_bytes(b"b" * 5000)
    return artifact("model", folder)


def caches(tmp_path: Path, host_limit: int | None = None) -> tuple[ArtifactCache, ArtifactCache]:
    disk = ArtifactCache(tmp_path / "disk", margin=0)
    host = ArtifactCache(tmp_path / "host", host_limit, margin=0, tier=Tier.HOST)
    return disk, host


def same_files(local: Path, origin: str) -> bool:
    return all((local / f.name).read_bytes() == f.read_bytes() for f in Path(origin).iterdir())


def test_a_fetch_lands_in_host_and_the_disk_copy_is_written_behind(
    tmp_path: Path, weights: Artifact
) -> None:
    disk, host = caches(tmp_path)
    chain = StagingChain(disk, host)
    placed = chain.stage(weights)
    assert (placed.tier, placed.bytes) == (Tier.ORIGIN, 10240 + 5000)
    assert placed.path == host.entry_path(weights.digest) and same_files(placed.path, weights.uri)
    assert chain.settle(timeout=30)
    assert disk.get(weights.digest) is not None
    assert same_files(disk.entry_path(weights.digest), weights.uri)
    # Pinned where the loader reads; the DISK copy may go, and the copy's own pin is gone.
    assert placed.pin == (host, weights.digest)
    assert host.pinned() == {weights.digest} and disk.pinned() == set()
    # Another process of the node (a restarted worker): a HOST hit.
    again = StagingChain(*caches(tmp_path)).stage(weights)
    assert (again.tier, again.bytes, again.path) == (Tier.HOST, 0, placed.path)


def test_a_disk_copy_that_does_not_fit_leaves_the_host_load_alone(
    tmp_path: Path, weights: Artifact
) -> None:
    disk = ArtifactCache(tmp_path / "disk", 1000, margin=0)  # smaller than the artifact
    host = ArtifactCache(tmp_path / "host", margin=0, tier=Tier.HOST)
    chain = StagingChain(disk, host)
    placed = chain.stage(weights)
    assert chain.settle(timeout=30)
    assert placed.pin == (host, weights.digest) and same_files(placed.path, weights.uri)
    assert disk.get(weights.digest) is None and disk.pinned() == set()
    assert host.pinned() == {weights.digest}  # the load's pin alone


def test_a_disk_hit_is_copied_into_host(tmp_path: Path, weights: Artifact) -> None:
    disk, host = caches(tmp_path)
    disk.stage(weights)
    disk.unpin(weights.digest)
    placed = StagingChain(disk, host).stage(weights)
    assert (placed.tier, placed.bytes) == (Tier.DISK, 0)
    assert placed.pin == (host, weights.digest) and same_files(placed.path, weights.uri)
    assert disk.pinned() == set()


def test_a_full_host_cache_leaves_the_load_on_disk(tmp_path: Path, weights: Artifact) -> None:
    disk, host = caches(tmp_path, host_limit=1000)  # smaller than the artifact
    placed = StagingChain(disk, host).stage(weights)
    assert placed.tier is Tier.ORIGIN
    assert placed.path == disk.entry_path(weights.digest)
    assert placed.pin == (disk, weights.digest) and host.pinned() == set()
    assert host.get(weights.digest) is None


def test_a_corrupt_host_copy_is_replaced_from_disk(tmp_path: Path, weights: Artifact) -> None:
    disk, host = caches(tmp_path)
    chain = StagingChain(disk, host)
    first = chain.stage(weights)
    assert chain.settle(timeout=30)
    host.unpin(weights.digest)
    (first.path / "b.bin").write_bytes(b"x" * 5000)  # same size: found by a re-hash
    placed = StagingChain(disk, host).stage(weights)
    assert (placed.tier, placed.bytes) == (Tier.DISK, 0)
    assert placed.path == first.path and same_files(placed.path, weights.uri)


def test_a_holder_is_pulled_from_without_touching_the_origin(
    tmp_path: Path, weights: Artifact
) -> None:
    peer = ArtifactCache(tmp_path / "peer", margin=0)
    peer.stage(weights)
    remote = FakeRemote(peer, holders=(["tcp://peer"],))
    disk, host = caches(tmp_path)
    placed = StagingChain(disk, host, remote).stage(weights)
    assert placed.tier is Tier.PEER and same_files(placed.path, weights.uri)
    assert remote.log == ["holders ['tcp://peer']", "pull", "publish"]


def test_when_every_peer_fails_the_origin_is_read_under_the_lease(
    tmp_path: Path, weights: Artifact
) -> None:
    remote = FakeRemote(holders=(["tcp://gone"],))
    remote.peer_fails = True
    disk, _ = caches(tmp_path)
    placed = StagingChain(disk, None, remote).stage(weights)
    assert placed.tier is Tier.ORIGIN
    # Peers first; with the lease, peers again once; then the origin, published before
    # the lease goes.
    assert remote.log == [
        "holders ['tcp://gone']",
        "pull",
        "lease",
        "holders ['tcp://gone']",
        "release",
        "holders ['tcp://gone']",
        "pull",
        "lease",
        "publish in lease",
        "release",
    ]


def test_a_holder_that_appears_during_the_wait_for_the_lease_is_pulled_from(
    tmp_path: Path, weights: Artifact
) -> None:
    peer = ArtifactCache(tmp_path / "peer", margin=0)
    peer.stage(weights)
    # No holder at first; once the lease is held, the worker that read the origin is one.
    remote = FakeRemote(peer, holders=([], ["tcp://first"]))
    disk, _ = caches(tmp_path)
    placed = StagingChain(disk, None, remote).stage(weights)
    assert placed.tier is Tier.PEER
    assert remote.log == [
        "holders []",
        "lease",
        "holders ['tcp://first']",
        "release",
        "holders ['tcp://first']",
        "pull",
        "publish",
    ]


def test_a_failed_origin_read_gives_the_lease_back(tmp_path: Path, weights: Artifact) -> None:
    remote = FakeRemote()
    missing = Artifact("model", str(tmp_path / "nowhere"), weights.digest)
    disk, host = caches(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        StagingChain(disk, host, remote).stage(missing)
    assert remote.log[-1] == "release" and not remote.leased
    assert disk.pinned() == set() and host.pinned() == set()


def test_host_cache_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOST_CACHE_ENV, str(tmp_path / "shm"))
    monkeypatch.setenv(HOST_LIMIT_ENV, "2MB")
    configured = host_cache()
    assert configured is not None
    assert (configured.root, configured.limit, configured.tier) == (
        tmp_path / "shm",
        2_000_000,
        Tier.HOST,
    )
    assert host_cache(limit="0") is None  # the tier is off
    monkeypatch.delenv(HOST_LIMIT_ENV)
    unlimited = host_cache(tmp_path / "other")
    assert unlimited is not None and unlimited.limit is not None and unlimited.limit > 0


def test_origin_readers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pervade.core.config import ConfigError
    from pervade.worker.holders import READERS_ENV, readers_from_env

    monkeypatch.delenv(READERS_ENV, raising=False)
    assert readers_from_env() == 1
    monkeypatch.setenv(READERS_ENV, "5")
    assert readers_from_env() == 5
    assert readers_from_env(1) == 1  # an explicit setting wins
    for bad in ("0", "two"):
        monkeypatch.setenv(READERS_ENV, bad)
        with pytest.raises(ConfigError, match=READERS_ENV):
            readers_from_env()
