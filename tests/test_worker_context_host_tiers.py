"""ContextHost with artifacts: tiers, pins, prefetch, and demotion under a device budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from pervade.core import Artifact, ContextState
from pervade.core.cache_policy import Tier
from pervade.runtime.artifacts import artifact
from pervade.storage.cache import ArtifactCache
from pervade.worker.context_host import ContextHost, LoadInfo
from tests.helpers import loaders
from tests.helpers.context_host import Recorder, spec_for, with_loads

S = ContextState


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return str(request.node.nodeid)


@pytest.fixture
def notes() -> Recorder:
    return Recorder()


# -- artifacts through the disk cache --------------------------------------------------------


def test_loads_say_which_tier_their_artifacts_came_from(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 300)
    cache = ArtifactCache(tmp_path / "cache", margin=0)
    spec = spec_for("build", key, artifact("model", weights))
    first = ContextHost(notes, cache=cache)
    with first.use(spec) as (value, _):
        local = Path(value["model"])
        assert local.parent == cache.root / spec.artifacts[0].digest
        assert local.read_bytes() == b"w" * 300
    assert notes.loads == [LoadInfo(Tier.ORIGIN, 300, notes.loads[0].fetch_seconds)]
    # A second process of the node (another host on the same cache) finds it on disk.
    second = ContextHost(notes, cache=ArtifactCache(cache.root, margin=0))
    second.load(spec)
    assert (notes.loads[1].tier, notes.loads[1].bytes) == (Tier.DISK, 0)
    # No artifacts: no tier.
    ContextHost(notes, cache=cache).load(spec_for("build", key + "-bare"))
    assert notes.loads[2] == LoadInfo(None, 0, 0.0)


def test_live_contexts_pin_their_artifacts(notes: Recorder, key: str, tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 10)
    cache = ArtifactCache(tmp_path / "cache", margin=0)
    spec = spec_for("build", key, artifact("model", weights))
    host = ContextHost(notes, cache=cache)
    host.load(spec)
    assert cache.pinned() == {spec.artifacts[0].digest}
    host.drop(spec.id)
    assert cache.pinned() == set()
    # A build that fails releases its pins too.
    broken = spec_for("broken", key, artifact("model", weights))
    with pytest.raises(RuntimeError, match="cannot build"):
        host.load(broken)
    assert cache.pinned() == set()


def test_digests_that_are_not_sha256_are_read_at_the_origin(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    host = ContextHost(notes, cache=ArtifactCache(tmp_path / "cache", margin=0))
    with host.use(spec_for("build", key, Artifact("model", str(weights), "sha-x"))) as (value, _):
        assert value["model"] == str(weights)
    assert notes.loads[0].tier is Tier.ORIGIN
    assert notes.loads[0].bytes == 0


# -- staged contexts: prefetch and drop ------------------------------------------------------


def test_prefetch_stages_without_building_and_reports_staged(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"p" * 500)
    cache = ArtifactCache(tmp_path / "cache", margin=0)
    host = ContextHost(notes, cache=cache)
    spec = spec_for("build", key, artifact("model", weights))
    thread = host.prefetch(spec)
    assert thread is not None
    thread.join(timeout=10)
    assert loaders.calls[key] == 0
    assert notes.states == [S.STAGED] and host.states() == {spec.id: S.STAGED}
    assert (notes.loads[0].tier, notes.loads[0].bytes) == (Tier.ORIGIN, 500)
    assert cache.pinned() == set()  # staged, not live: nothing pinned
    assert host.prefetch(spec) is None  # already staged
    # The build that follows finds the files on disk.
    host.load(spec)
    assert (notes.loads[-1].tier, notes.loads[-1].bytes) == (Tier.DISK, 0)
    assert host.prefetch(spec) is None  # live


def test_prefetch_of_staged_files_evicted_since_copies_again(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"e" * 100)
    cache = ArtifactCache(tmp_path / "cache", margin=0)
    host = ContextHost(notes, cache=cache)
    spec = spec_for("build", key, artifact("model", weights))
    first = host.prefetch(spec)
    assert first is not None
    first.join(timeout=10)
    assert cache._evict(spec.artifacts[0].digest)  # as room for another artifact would
    second = host.prefetch(spec)
    assert second is not None
    second.join(timeout=10)
    assert [load.tier for load in notes.loads] == [Tier.ORIGIN, Tier.ORIGIN]


def test_a_failed_prefetch_reports_failed(notes: Recorder, key: str, tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"f")
    spec = spec_for("build", key, artifact("model", weights))
    weights.unlink()
    host = ContextHost(notes, cache=ArtifactCache(tmp_path / "cache", margin=0))
    thread = host.prefetch(spec)
    assert thread is not None
    thread.join(timeout=10)
    assert notes.states == [S.FAILED]


def test_a_dropped_context_whose_artifacts_stay_is_staged(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"d" * 10)
    host = ContextHost(notes, cache=ArtifactCache(tmp_path / "cache", margin=0))
    spec = spec_for("build", key, artifact("model", weights))
    host.load(spec)
    host.drop(spec.id)
    assert notes.states[-1] is S.STAGED and host.states() == {spec.id: S.STAGED}
    assert host.live() == []
    # Without artifacts on the node there is nothing staged: absent, and forgotten.
    bare = spec_for("build", key + "-bare")
    host.load(bare)
    host.drop(bare.id)
    assert notes.states[-1] is S.ABSENT and bare.id not in host.states()
    # A staged context builds again on demand, from the disk.
    host.load(spec)
    assert loaders.calls[key] == 2 and host.states()[spec.id] is S.WARM


# -- several contexts under a device budget --------------------------------------------------


def test_a_build_past_the_device_budget_demotes_the_least_recently_used(
    notes: Recorder, key: str, tmp_path: Path
) -> None:
    files = []
    for name in ("a", "b", "c"):
        weights = tmp_path / f"{name}.bin"
        weights.write_bytes(name.encode() * 400)
        files.append(artifact("model", weights))
    disk = ArtifactCache(tmp_path / "disk", margin=0)
    tmpfs = ArtifactCache(tmp_path / "host", margin=0, tier=Tier.HOST)
    # Room for two 400-byte contexts, not three.
    host = ContextHost(notes, cache=disk, host_cache=tmpfs, device_budget=1000)
    a, b, c = (spec_for("build", f"{key}-{n}", f) for n, f in zip("abc", files, strict=True))
    host.load(a)
    host.load(b)
    with host.use(a):
        pass  # a is now the more recently used of the two
    host.load(c)
    assert host.states() == {a.id: S.WARM, b.id: S.STAGED, c.id: S.WARM}
    assert host.demotions == 1
    demoted = [(cid, load) for (cid, state, _), load in with_loads(notes) if state is S.STAGED]
    assert demoted == [(b.id, LoadInfo(Tier.HOST))], "b went to the HOST tier, not away"
    # The DISK copies written behind the loads pin their HOST entries until they end; on a
    # busy machine b's may still be under way.
    assert host.staging.settle(timeout=30)
    assert tmpfs.pinned() == {a.artifacts[0].digest, c.artifacts[0].digest}
    # b comes back from the HOST tier, and a (now least recently used) makes room for it.
    host.load(b)
    assert notes.loads[-1].tier is Tier.HOST
    assert host.states() == {a.id: S.STAGED, b.id: S.WARM, c.id: S.WARM}
    assert loaders.calls[f"{key}-b"] == 2


def test_a_context_in_use_is_never_demoted(notes: Recorder, key: str, tmp_path: Path) -> None:
    host = ContextHost(notes, device_budget=10)  # nothing fits beside anything
    first, second = spec_for("build", key + "-1"), spec_for("build", key + "-2")
    host.load(first)
    with host.use(first):
        host.load(second)  # too big to fit beside it, but `first` is running a task
        assert host.states()[first.id] is S.BUSY
    assert host.demotions == 0
