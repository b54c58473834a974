"""Worker processes of one node spread over its GPUs, one each, before CUDA starts."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pervade.worker.gpus import (
    LOCKS_ENV,
    VISIBLE_ENV,
    GpuClaim,
    default_lock_dir,
    node_gpus,
    visible_gpus,
)


def claim(monkeypatch: pytest.MonkeyPatch, locks: Path, visible: str) -> GpuClaim:
    """A claim as a fresh worker process of the node makes it (each has its own env)."""
    monkeypatch.setenv(VISIBLE_ENV, visible)
    made = GpuClaim()
    made.take(locks)
    return made


def test_each_worker_takes_a_gpu_no_live_worker_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = claim(monkeypatch, tmp_path, "3,5")
    assert first.gpu == "3"
    second = claim(monkeypatch, tmp_path, "3,5")
    assert second.gpu == "5"
    assert os.environ[VISIBLE_ENV] == "5"  # narrowed: CUDA will see one device, its own
    # The first worker dies: its lock goes with it, and its replacement takes its GPU.
    first.release()
    replacement = claim(monkeypatch, tmp_path, "3,5")
    assert replacement.gpu == "3"
    # A claim is made once per process.
    assert replacement.take(tmp_path) == "3"


def test_more_workers_than_gpus_share_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    held = [claim(monkeypatch, tmp_path, "0,1") for _ in range(2)]
    assert sorted(c.gpu or "" for c in held) == ["0", "1"]
    with caplog.at_level(logging.WARNING):
        extra = claim(monkeypatch, tmp_path, "0,1")
    assert extra.gpu in ("0", "1") and "shares GPU" in caplog.text


def test_one_visible_gpu_is_left_as_the_batch_system_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = claim(monkeypatch, tmp_path, "2")
    assert alone.gpu is None
    assert os.environ[VISIBLE_ENV] == "2" and not list(tmp_path.iterdir())


def test_gpus_after_a_negative_entry_are_not_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CUDA reads CUDA_VISIBLE_DEVICES up to its first negative entry: "0,-1,2" is GPU 0 only,
    # and a claim of "-1" would hide every GPU from the worker.
    alone = claim(monkeypatch, tmp_path, "0,-1,2")
    assert alone.gpu is None and os.environ[VISIBLE_ENV] == "0,-1,2"
    assert visible_gpus() == ["0"] and node_gpus(tmp_path / "none") == 1


def test_no_claim_once_cuda_is_running_in_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)
    with caplog.at_level(logging.WARNING):
        late = claim(monkeypatch, tmp_path, "0,1")
    assert late.gpu is None and "initialized" in caplog.text
    assert os.environ[VISIBLE_ENV] == "0,1"


def test_gpus_are_counted_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VISIBLE_ENV, raising=False)
    fake = SimpleNamespace(cuda=SimpleNamespace(device_count=lambda: 3))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv(VISIBLE_ENV, "")  # the batch system gave no GPU
    assert visible_gpus() == []


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_run_learns_each_workers_gpu_class_from_its_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client, LocalCluster

    import pervade
    from pervade.reports.summary import summary_rows
    from pervade.runtime.stats import RunStats
    from pervade.worker.gpus import CLASS_ENV
    from tests.helpers import workloads

    monkeypatch.setenv(CLASS_ENV, "test-gpu-40gb")  # worker processes inherit it
    seen: list[RunStats] = []
    context = pervade.context(workloads.process_context, args={"tag": "classes"})
    items = [(f"g{n}", {"n": n}) for n in range(20)]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        results = list(
            pervade.map(
                workloads.describe, items, context=context, client=client, observer=seen.append
            )
        )
    assert len(results) == 20 and all(r.ok for r in results)
    stats = seen[-1]
    # Both workers said so once they built the context (one or both did: 20 items may
    # all go to the first warm one).
    assert set(stats.gpu_classes) == {"test-gpu-40gb"}
    assert 1 <= stats.gpu_classes["test-gpu-40gb"] <= 2
    rows = dict(summary_rows(stats, 1.0, None, {}))
    assert "test-gpu-40gb" in rows["GPUs"]


def test_the_gpu_class_is_unknown_until_cuda_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from pervade.worker.gpus import CLASS_ENV, gpu_class

    monkeypatch.delenv(CLASS_ENV, raising=False)
    idle = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", idle)
    assert gpu_class() == ""
    running = SimpleNamespace(
        cuda=SimpleNamespace(
            is_initialized=lambda: True, get_device_name=lambda: "NVIDIA H100 80GB HBM3"
        )
    )
    monkeypatch.setitem(sys.modules, "torch", running)
    assert gpu_class() == "nvidia-h100-80gb-hbm3"
    monkeypatch.setenv(CLASS_ENV, "a100-80gb")  # the batch system's own name wins
    assert gpu_class() == "a100-80gb"


def test_each_batch_job_claims_in_its_own_lock_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # Slurm and HTCondor number a job's GPUs from 0 when they confine it to them: GPU 0 of
    # two jobs on a node are two GPUs, and one job's lock must not push the other aside.
    for name in (LOCKS_ENV, "_CONDOR_SCRATCH_DIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    mine = Path("/tmp") / f"pervade-{os.getuid()}"
    assert default_lock_dir() == mine / "gpus"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert default_lock_dir() == mine / "gpus-slurm-4242"
    monkeypatch.setenv("_CONDOR_SCRATCH_DIR", "/var/lib/condor/execute/dir_77")
    assert default_lock_dir() == Path("/var/lib/condor/execute/dir_77/.pervade-gpus")
    monkeypatch.setenv(LOCKS_ENV, "/scratch/locks")
    assert default_lock_dir() == Path("/scratch/locks")


def test_node_gpus_counts_what_the_driver_lists_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VISIBLE_ENV, raising=False)
    listing = tmp_path / "gpus"
    assert node_gpus(listing) == 0  # no NVIDIA driver
    listing.mkdir()
    for bus in ("0000:18:00.0", "0000:2a:00.0"):
        (listing / bus).mkdir()
    assert node_gpus(listing) == 2
    monkeypatch.setenv(VISIBLE_ENV, "1")  # the batch system's choice comes first
    assert node_gpus(listing) == 1
