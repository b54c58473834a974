"""ContextHost, the pure part of the worker's context plugin, without Dask."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from pervade.core import Artifact, ContextSpec, ContextState
from pervade.core.cache_policy import Tier
from pervade.runtime.artifacts import artifact
from pervade.storage.cache import ArtifactCache
from pervade.worker.context_host import ContextHost, LoadInfo
from pervade.worker.imports import ImportPathError
from tests.helpers import loaders

S = ContextState


class Recorder:
    """A notify callback that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, ContextState, float | None]] = []
        self.loads: list[LoadInfo] = []

    def __call__(
        self, context: str, state: ContextState, seconds: float | None, load: LoadInfo | None
    ) -> None:
        self.reports.append((context, state, seconds))
        if load is not None:
            self.loads.append(load)

    @property
    def states(self) -> list[ContextState]:
        return [state for _, state, _ in self.reports]


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return str(request.node.nodeid)


@pytest.fixture
def notes() -> Recorder:
    return Recorder()


@pytest.fixture
def host(notes: Recorder) -> ContextHost:
    return ContextHost(notes)


def spec_for(loader: str, key: str, *artifacts: Artifact) -> ContextSpec:
    return ContextSpec(f"tests.helpers.loaders:{loader}", {"key": key}, artifacts)


def test_loader_called_once_across_two_uses(host: ContextHost, key: str) -> None:
    spec = spec_for("build", key)
    with host.use(spec) as (first, first_seconds):
        assert first["key"] == key
    with host.use(spec) as (second, second_seconds):
        pass
    assert loaders.calls[key] == 1
    assert second is first
    assert first_seconds > 0.0
    assert second_seconds == 0.0
    assert host.live() == [spec.id]
    assert host.states() == {spec.id: S.WARM}


def test_states_reported_in_order(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = spec_for("build", key)
    with host.use(spec):
        assert notes.states == [S.FETCHING, S.LOADING, S.WARM, S.BUSY]
        assert host.states()[spec.id] is S.BUSY
    assert notes.states == [S.FETCHING, S.LOADING, S.WARM, S.BUSY, S.WARM]
    assert {context for context, _, _ in notes.reports} == {spec.id}
    # Only the WARM that ends a build carries the build's seconds.
    seconds = [s for _, _, s in notes.reports]
    assert seconds[2] is not None and seconds[2] > 0
    assert [s for i, s in enumerate(seconds) if i != 2] == [None] * 4
    # A warm use reports only busy and warm again.
    with host.use(spec):
        pass
    assert notes.states[5:] == [S.BUSY, S.WARM]


def test_use_returns_to_warm_when_the_task_raises(host: ContextHost, key: str) -> None:
    spec = spec_for("build", key)
    with pytest.raises(KeyError), host.use(spec):
        raise KeyError("task bug")
    assert host.states() == {spec.id: S.WARM}
    with host.use(spec) as (_, seconds):
        assert seconds == 0.0
    assert loaders.calls[key] == 1


def test_artifacts_are_passed_by_name(host: ContextHost, key: str, tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    spec = spec_for("build", key, Artifact("model", str(weights), "sha-x"))
    with host.use(spec) as (value, _):
        assert value == {"key": key, "build": 1, "model": str(weights)}


def test_missing_artifact_fails_and_propagates(
    host: ContextHost, notes: Recorder, key: str, tmp_path: Path
) -> None:
    missing = tmp_path / "not-there.bin"
    spec = spec_for("build", key, Artifact("model", str(missing), "sha-x"))
    ran = False
    with pytest.raises(FileNotFoundError, match=r"not-there\.bin"), host.use(spec):
        ran = True
    assert not ran
    assert notes.states == [S.FETCHING, S.FAILED]
    assert host.states() == {spec.id: S.FAILED}
    assert host.live() == []
    assert loaders.calls[key] == 0
    # Once the file exists, the next use builds it.
    missing.write_bytes(b"\0")
    assert host.load(spec) > 0.0
    assert notes.states[-3:] == [S.FETCHING, S.LOADING, S.WARM]
    assert loaders.calls[key] == 1


def test_loader_error_fails_and_propagates(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = spec_for("broken", key)
    with pytest.raises(RuntimeError, match="cannot build"):
        host.load(spec)
    assert notes.states == [S.FETCHING, S.LOADING, S.FAILED]
    # A failed build is not remembered as live: the next use tries again.
    with pytest.raises(RuntimeError, match="cannot build"), host.use(spec):
        pass
    assert loaders.calls[key] == 2
    assert host.states() == {spec.id: S.FAILED}


def test_unimportable_loader_fails(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = ContextSpec("tests.helpers.loaders:no_such_loader", {"key": key})
    with pytest.raises(ImportPathError, match="no_such_loader"):
        host.load(spec)
    assert notes.states[-1] is S.FAILED


def test_load_returns_zero_when_already_live(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = spec_for("build", key)
    assert host.load(spec) > 0.0
    assert notes.states == [S.FETCHING, S.LOADING, S.WARM]
    assert host.load(spec) == 0.0
    # Asked again, it says again that it is warm: the dispatcher that asked had lost track.
    assert notes.states == [S.FETCHING, S.LOADING, S.WARM, S.WARM]
    with host.use(spec) as (_, seconds):
        assert seconds == 0.0
    assert loaders.calls[key] == 1


def test_drop_forgets_the_context(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = spec_for("build", key)
    host.load(spec)
    host.drop(spec.id)
    assert notes.states[-1] is S.ABSENT
    assert host.states() == {}
    host.drop(spec.id)  # dropping twice is harmless
    assert host.load(spec) > 0.0
    assert loaders.calls[key] == 2


class ContendedLock:
    """A lock that says when a second caller starts waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.entries = 0
        self.contended = threading.Event()

    def __enter__(self) -> None:
        with self._count:
            self.entries += 1
            if self.entries >= 2:
                self.contended.set()
        self._lock.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()


def test_concurrent_use_builds_once(host: ContextHost, notes: Recorder, key: str) -> None:
    spec = spec_for("gated", key)
    started, release = loaders.gate(key)
    # Swap in a lock that tells when the second thread is waiting, so the test knows the
    # two uses really overlap (no sleeps). The entry is created exactly as use() would.
    lock = ContendedLock()
    host._entry(spec).lock = lock  # type: ignore[assignment]
    got: dict[str, tuple[Any, float]] = {}
    errors: list[BaseException] = []

    def task(name: str) -> None:
        try:
            with host.use(spec) as (value, seconds):
                got[name] = (value, seconds)
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=task, args=("first",))
    first.start()
    assert started.wait(timeout=10), "the first build never started"
    second = threading.Thread(target=task, args=("second",))
    second.start()
    assert lock.contended.wait(timeout=10), "the second use never reached the lock"
    assert "second" not in got  # it waits for the build in progress
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert not first.is_alive() and not second.is_alive()
    assert errors == []
    assert loaders.calls[key] == 1
    assert got["second"][0] is got["first"][0]
    assert got["first"][1] > 0.0
    assert got["second"][1] == 0.0
    assert notes.states == [S.FETCHING, S.LOADING, S.WARM, S.BUSY, S.WARM, S.BUSY, S.WARM]


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
    demoted = [(cid, load) for (cid, state, _), load in _with_loads(notes) if state is S.STAGED]
    assert demoted == [(b.id, LoadInfo(Tier.HOST))], "b went to the HOST tier, not away"
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


def _with_loads(notes: Recorder) -> list[tuple[tuple[str, ContextState, float | None], Any]]:
    """Each report with the LoadInfo it carried (None without)."""
    out: list[tuple[tuple[str, ContextState, float | None], Any]] = []
    loads = iter(notes.loads)
    for report in notes.reports:
        carries = report[1] in (S.WARM, S.STAGED) and (
            report[2] is not None or report[1] is S.STAGED
        )
        out.append((report, next(loads) if carries else None))
    return out
