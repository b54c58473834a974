"""The worker's local disk cache of artifacts, on temporary directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pervade.core import Artifact
from pervade.core.cache_policy import CacheFull, Tier
from pervade.core.config import ConfigError
from pervade.runtime.artifacts import artifact, digest_path
from pervade.storage.cache import ArtifactCache, ArtifactMismatch, Staged

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", margin=0)


def origin_file(
    tmp_path: Path, name: str = "weights.bin", size: int = 1000, seed: int = 1
) -> Artifact:
    path = tmp_path / "origin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((seed + i) % 251 for i in range(size)))
    return artifact(name.split(".")[0], path)


def test_cold_fetch_copies_from_origin_into_the_layout(
    cache: ArtifactCache, tmp_path: Path
) -> None:
    weights = origin_file(tmp_path)
    staged = cache.stage(weights)
    assert staged.tier is Tier.ORIGIN
    assert staged.bytes == 1000
    assert staged.seconds > 0
    assert staged.path == cache.root / weights.digest / "weights.bin"
    assert staged.path.read_bytes() == Path(weights.uri).read_bytes()
    manifest = json.loads((cache.root / f"{weights.digest}.json").read_text())
    assert manifest["digest"] == weights.digest
    assert manifest["kind"] == "file"
    assert [(f["path"], f["size"]) for f in manifest["files"]] == [("weights.bin", 1000)]
    assert manifest["files"][0]["sha256"] == weights.digest
    assert list((cache.root / ".partial").iterdir()) == []


def test_a_folder_keeps_its_relative_paths_and_its_digest(
    cache: ArtifactCache, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "b.bin").write_bytes(b"b" * 10)
    model = artifact("model", folder)
    staged = cache.stage(model)
    assert staged.path == cache.root / model.digest
    assert (staged.path / "sub" / "b.bin").read_bytes() == b"b" * 10
    assert digest_path(staged.path) == model.digest  # the copy hashes like the origin
    manifest = json.loads((cache.root / f"{model.digest}.json").read_text())
    assert manifest["kind"] == "folder"
    assert [f["path"] for f in manifest["files"]] == ["config.json", "sub/b.bin"]


def test_second_stage_is_a_hit_without_a_copy(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    first = cache.stage(weights)
    inode = first.path.stat().st_ino
    Path(weights.uri).unlink()  # a hit never reads the origin
    second = cache.stage(weights)
    assert (second.tier, second.bytes, second.path) == (Tier.DISK, 0, first.path)
    assert second.path.stat().st_ino == inode
    # Another process on the node (a new cache object on the same root) hits as well.
    other = ArtifactCache(cache.root, margin=0)
    assert other.get(weights.digest) == first.path
    assert other.stage(weights).tier is Tier.DISK


def test_get_of_an_unknown_digest_is_none(cache: ArtifactCache) -> None:
    assert cache.get("0" * 64) is None


def test_truncated_file_is_detected_and_fetched_again(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    path = cache.stage(weights).path
    with path.open("r+b") as handle:
        handle.truncate(400)
    assert cache.get(weights.digest) is None
    again = cache.stage(weights)
    assert (again.tier, again.bytes) == (Tier.ORIGIN, 1000)
    assert again.path.read_bytes() == Path(weights.uri).read_bytes()


def test_same_size_corruption_is_found_by_a_rehash(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    path = cache.stage(weights).path
    arrived = path.stat().st_mtime_ns
    path.write_bytes(b"\xff" * 1000)
    os.utime(path, ns=(arrived + 10**9, arrived + 10**9))  # a write moves the mtime
    assert cache.get(weights.digest) is None
    again = cache.stage(weights)
    assert again.tier is Tier.ORIGIN
    assert again.path.read_bytes() == Path(weights.uri).read_bytes()


def test_touched_but_intact_file_stays_a_hit(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    path = cache.stage(weights).path
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    assert cache.stage(weights).tier is Tier.DISK
    manifest = json.loads(cache.manifest_path(weights.digest).read_text())
    assert manifest["files"][0]["mtime_ns"] == later  # the next check is cheap again


def test_missing_manifest_means_incomplete(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    cache.stage(weights)
    cache.manifest_path(weights.digest).unlink()
    assert cache.get(weights.digest) is None
    assert cache.stage(weights).tier is Tier.ORIGIN


def test_leftovers_of_dead_processes_are_removed_at_startup(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest = "a" * 64
    (root / ".partial" / f"{digest}-dead0001" / "sub").mkdir(parents=True)
    (root / ".partial" / f"{digest}-dead0001" / "sub" / "x.bin").write_bytes(b"x")
    (root / ".partial" / f"{digest}-dead0002.json").write_text("{")
    (root / digest).mkdir()  # renamed into place, but its manifest never written
    ArtifactCache(root, margin=0)
    assert list((root / ".partial").iterdir()) == []
    assert not (root / digest).exists()


def test_origin_that_changed_is_refused(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path)
    Path(weights.uri).write_bytes(b"other bytes")
    with pytest.raises(ArtifactMismatch, match=r"weights.*expects " + weights.digest):
        cache.stage(weights)
    assert cache.get(weights.digest) is None
    assert list((cache.root / ".partial").iterdir()) == []
    assert cache.pinned() == set()


def test_missing_origin_names_the_path(cache: ArtifactCache, tmp_path: Path) -> None:
    missing = Artifact("model", str(tmp_path / "nowhere.bin"), "b" * 64)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.bin"):
        cache.stage(missing)


def stage_at(cache: ArtifactCache, item: Artifact, used: float) -> Staged:
    """Stage, release the pin, and set the entry's last use (its manifest's mtime)."""
    staged = cache.stage(item)
    cache.unpin(item.digest)
    os.utime(cache.manifest_path(item.digest), (used, used))
    return staged


def test_least_recently_used_entries_make_room(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", limit=2500, margin=0)
    a, b = origin_file(tmp_path, "a.bin", seed=1), origin_file(tmp_path, "b.bin", seed=2)
    stage_at(cache, a, 1000.0)
    stage_at(cache, b, 2000.0)
    stage_at(cache, a, 3000.0)  # a used again: b is now the least recent
    c = origin_file(tmp_path, "c.bin", seed=3)
    assert cache.stage(c).tier is Tier.ORIGIN
    assert cache.get(b.digest) is None
    assert not (cache.root / b.digest).exists()
    assert cache.get(a.digest) is not None
    assert sum(e.size for e in cache.entries()) == 2000


def test_pinned_entries_are_never_evicted(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", limit=2500, margin=0)
    a, b = origin_file(tmp_path, "a.bin", seed=1), origin_file(tmp_path, "b.bin", seed=2)
    cache.stage(a)  # stays pinned: a live context uses it
    stage_at(cache, b, 2000.0)
    os.utime(cache.manifest_path(a.digest), (1000.0, 1000.0))  # a is the older one
    cache.stage(origin_file(tmp_path, "c.bin", seed=3))
    assert cache.get(a.digest) is not None
    assert cache.get(b.digest) is None
    # With a and c pinned, nothing can make room for d.
    with pytest.raises(CacheFull, match=r"'d'.*pinned"):
        cache.stage(origin_file(tmp_path, "d.bin", seed=4))
    cache.unpin(a.digest)
    assert cache.stage(origin_file(tmp_path, "d.bin", seed=4)).tier is Tier.ORIGIN
    assert cache.get(a.digest) is None


def test_artifact_larger_than_the_limit_is_a_clear_error(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", limit=500, margin=0)
    with pytest.raises(CacheFull, match=r"weights.*1000 bytes.*limit of 500 bytes"):
        cache.stage(origin_file(tmp_path))
    assert cache.entries() == []


def test_configuration_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERVADE_CACHE", str(tmp_path / "base"))
    monkeypatch.delenv("PERVADE_ARTIFACT_CACHE", raising=False)
    monkeypatch.setenv("PERVADE_ARTIFACT_CACHE_LIMIT", "2MB")
    default = ArtifactCache.configured()
    assert (default.root, default.limit) == (tmp_path / "base" / "artifacts", 2_000_000)
    monkeypatch.setenv("PERVADE_ARTIFACT_CACHE", str(tmp_path / "own"))
    assert ArtifactCache.configured().root == tmp_path / "own"
    explicit = ArtifactCache.configured(tmp_path / "given", "1KiB")
    assert (explicit.root, explicit.limit) == (tmp_path / "given", 1024)
    monkeypatch.setenv("PERVADE_ARTIFACT_CACHE_LIMIT", "lots")
    with pytest.raises(ConfigError, match="PERVADE_ARTIFACT_CACHE_LIMIT"):
        ArtifactCache.configured()


def test_threads_staging_one_digest_fetch_it_once(cache: ArtifactCache, tmp_path: Path) -> None:
    weights = origin_file(tmp_path, size=4_000_000)
    tiers: list[Tier] = []
    threads = [threading.Thread(target=lambda: tiers.append(cache.stage(weights).tier))]
    threads.append(threading.Thread(target=lambda: tiers.append(cache.stage(weights).tier)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(t.value for t in tiers) == ["disk", "origin"]


_RACER = """
import sys, time
from pathlib import Path
from pervade.core import Artifact
from pervade.storage.cache import ArtifactCache
root, uri, digest, go = sys.argv[1:5]
deadline = time.monotonic() + 60
while not Path(go).exists():  # start together, so the two fetches overlap
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.001)
print(ArtifactCache(Path(root), margin=0).stage(Artifact("w", uri, digest)).tier.value)
"""


@pytest.mark.timeout(120)
def test_two_processes_fetching_one_digest_end_with_one_good_copy(
    cache: ArtifactCache, tmp_path: Path
) -> None:
    weights = origin_file(tmp_path, size=20_000_000)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-c", _RACER, str(cache.root), weights.uri, weights.digest, str(go)]
    racers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    go.touch()
    outputs = [racer.communicate(timeout=90)[0].strip() for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    assert sorted(outputs) == ["disk", "origin"]
    assert cache.get(weights.digest) is not None
    assert digest_path(cache.root / weights.digest / "weights.bin") == weights.digest
    assert list((cache.root / ".partial").iterdir()) == []


def test_an_entry_pinned_by_another_process_is_not_evicted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    holder = ArtifactCache(root, margin=0)
    a = origin_file(tmp_path, "a.bin", seed=1)
    holder.stage(a)  # pinned through its lock file, which every process of the node sees
    other = ArtifactCache(root, limit=1500, margin=0)
    with pytest.raises(CacheFull, match=r"'b'"):
        other.stage(origin_file(tmp_path, "b.bin", seed=2))
    assert other.get(a.digest) is not None
    holder.unpin(a.digest)
    assert other.stage(origin_file(tmp_path, "b.bin", seed=2)).tier is Tier.ORIGIN
    assert other.get(a.digest) is None


class PeerLike:
    """A source that writes given bytes into the directory it is handed, as a peer pull does."""

    tier = Tier.PEER
    kind = "file"
    where = "worker tcp://peer:1"

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data, self.size = name, data, len(data)

    def fill(self, partial: Path) -> None:
        (partial / self.name).write_bytes(self.data)


def test_another_source_fills_an_entry_that_is_then_verified(
    cache: ArtifactCache, tmp_path: Path
) -> None:
    weights = origin_file(tmp_path)
    data = Path(weights.uri).read_bytes()
    Path(weights.uri).unlink()  # the origin is out of reach: only the peer has it
    staged = cache.stage(weights, PeerLike("weights.bin", data))
    assert (staged.tier, staged.bytes) == (Tier.PEER, 1000)
    assert staged.path.read_bytes() == data
    assert cache.stage(weights).tier is Tier.DISK
    manifest = json.loads(cache.manifest_path(weights.digest).read_text())
    assert manifest["files"][0]["mtime_ns"] == staged.path.stat().st_mtime_ns


def test_a_source_that_brings_other_bytes_publishes_nothing(
    cache: ArtifactCache, tmp_path: Path
) -> None:
    weights = origin_file(tmp_path)
    with pytest.raises(ArtifactMismatch, match=r"from worker tcp://peer:1"):
        cache.stage(weights, PeerLike("weights.bin", b"x" * 1000))
    assert cache.get(weights.digest) is None
    assert list((cache.root / ".partial").iterdir()) == []
