"""ContextHost, the pure part of the worker's context plugin, without Dask."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from pervade.core import Artifact, ContextSpec, ContextState
from pervade.worker.context_host import ContextHost
from pervade.worker.imports import ImportPathError
from tests.helpers import loaders
from tests.helpers.context_host import Recorder, spec_for

S = ContextState


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return str(request.node.nodeid)


@pytest.fixture
def notes() -> Recorder:
    return Recorder()


@pytest.fixture
def host(notes: Recorder) -> ContextHost:
    return ContextHost(notes)


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
