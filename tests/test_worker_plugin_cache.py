"""ContextHostPlugin's artifact cache settings, with a stand-in for the Dask worker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pervade.core import ContextSpec
from pervade.runtime.artifacts import artifact
from pervade.worker.peer import CHUNK_OP, DONE_OP, LOAD_OP, MANIFEST_OP
from pervade.worker.plugin import ContextHostPlugin


class FakeWorker:
    """What the plugin uses of a Dask worker: its address, its event log and its comm
    handlers (nothing here reaches the scheduler: no peer holds anything)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.handlers: dict[str, Any] = {}

    def log_event(self, topic: str, message: dict[str, Any]) -> None:
        self.events.append((topic, message))


def test_option_sets_the_cache_and_loads_report_tier_and_bytes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    plugin = ContextHostPlugin(
        cache_dir=str(tmp_path / "c"), cache_limit="1MB", host_cache_limit=0, peers=False
    )
    worker = FakeWorker(f"fake://{request.node.nodeid}")
    plugin.setup(worker)
    assert plugin.host is not None and plugin.host.cache is not None
    assert (plugin.host.cache.root, plugin.host.cache.limit) == (tmp_path / "c", 1_000_000)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 64)
    spec = ContextSpec(
        "tests.helpers.loaders:build", {"key": request.node.nodeid}, (artifact("model", weights),)
    )
    plugin.host.load(spec)
    warm = [m for _, m in worker.events if m["state"] == "warm"]
    assert warm[0]["tier"] == "origin" and warm[0]["bytes"] == 64
    assert warm[0]["load_seconds"] > 0 and warm[0]["fetch_seconds"] > 0


def test_a_cache_directory_that_cannot_be_made_means_reading_origins(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    plugin = ContextHostPlugin(cache_dir=str(blocker / "cache"), host_cache_limit=0)
    with caplog.at_level(logging.WARNING):
        plugin.setup(FakeWorker(f"fake://{request.node.nodeid}"))
    assert plugin.host is not None and plugin.host.cache is None
    assert "no artifact cache" in caplog.text and "a-file" in caplog.text


def test_host_cache_option_and_a_restarted_worker_loads_from_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def plugin() -> ContextHostPlugin:
        return ContextHostPlugin(
            cache_dir=str(tmp_path / "disk"),
            host_cache_dir=str(tmp_path / "shm"),
            host_cache_limit="1MB",
            peers=False,
        )

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"h" * 128)
    spec = ContextSpec(
        "tests.helpers.loaders:build", {"key": request.node.nodeid}, (artifact("model", weights),)
    )
    first, worker = plugin(), FakeWorker(f"fake://{request.node.nodeid}/1")
    first.setup(worker)
    assert first.host is not None and first.host.host_cache is not None
    assert first.host.host_cache.root == tmp_path / "shm"
    first.host.load(spec)
    # The process that replaces it on the node (another address) finds the HOST copy.
    second, again = plugin(), FakeWorker(f"fake://{request.node.nodeid}/2")
    second.setup(again)
    assert second.host is not None
    second.host.load(spec)
    tiers = [m["tier"] for _, m in worker.events + again.events if m["state"] == "warm"]
    assert tiers == ["origin", "host"]


def test_the_plugin_serves_its_caches_to_peers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    plugin = ContextHostPlugin(cache_dir=str(tmp_path / "disk"), host_cache_limit=0)
    worker = FakeWorker(f"fake://{request.node.nodeid}")
    plugin.setup(worker)
    assert plugin.host is not None and plugin.host.cache is not None
    assert set(worker.handlers) == {MANIFEST_OP, CHUNK_OP, LOAD_OP, DONE_OP}
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"s" * 32)
    model = artifact("model", weights)
    assert worker.handlers[MANIFEST_OP](digest=model.digest) is None  # not held yet
    plugin.host.cache.stage(model)
    manifest = worker.handlers[MANIFEST_OP](digest=model.digest)
    assert manifest["digest"] == model.digest and manifest["files"][0]["size"] == 32
    plugin.teardown(worker)
    assert worker.handlers == {}
