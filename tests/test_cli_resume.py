"""Kill or interrupt the driver mid-run, rerun the same command: nothing lost, nothing twice."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from distributed import Client

from tests.helpers.jobs import generic_job, pervade_process, read_ids

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
ITEMS = 240


def _wait_for_results(path: Path, at_least: int, timeout: float = 90.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(read_ids(path)) if path.exists() else 0
        if count >= at_least:
            return count
        time.sleep(0.1)
    raise AssertionError(f"{path} never reached {at_least} results")


def _finish_and_check(job: Path, tmp_path: Path, first_run: int, *flags: str) -> str:
    rerun = pervade_process("run", str(job), *flags, cwd=tmp_path)
    output, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, output
    results = tmp_path / "out" / "results.jsonl"
    counts = Counter(read_ids(results))
    assert len(counts) == ITEMS and set(counts.values()) == {1}, "each item exactly once"
    with sqlite3.connect(tmp_path / "out" / "results.journal.sqlite") as db:
        outcomes = db.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM outcomes").fetchone()
    assert outcomes == (ITEMS, ITEMS)
    assert f"{first_run}" in output or "done by earlier runs" in output
    return output


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def test_kill_9_of_the_driver_then_rerun_finishes_the_rest(tmp_path: Path) -> None:
    job = generic_job(tmp_path, ITEMS, delay=0.02)
    first = pervade_process("run", str(job), "--quiet", cwd=tmp_path)
    try:
        seen = _wait_for_results(tmp_path / "out" / "results.jsonl", ITEMS // 4)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group(first)  # the orphaned local workers
    assert seen < ITEMS, "the run finished before it could be killed"
    _finish_and_check(job, tmp_path, seen, "--quiet")


def test_ctrl_c_exits_130_and_rerun_resumes(tmp_path: Path) -> None:
    job = generic_job(tmp_path, ITEMS, delay=0.02)
    first = pervade_process("run", str(job), "--quiet", cwd=tmp_path)
    try:
        seen = _wait_for_results(tmp_path / "out" / "results.jsonl", ITEMS // 4)
        os.kill(first.pid, signal.SIGINT)
        output, _ = first.communicate(timeout=60)
    finally:
        _kill_group(first)
    assert first.returncode == 130, output
    assert "Run the same command again" in output
    _finish_and_check(job, tmp_path, seen, "--quiet")


def test_kill_9_of_a_driver_on_a_running_cluster_then_rerun_reuses_its_warm_contexts(
    client: Client, tmp_path: Path
) -> None:
    """The cluster outlives its driver: the rerun resumes from the journal and finds the
    context the first driver built still warm on every worker."""
    job = generic_job(tmp_path, ITEMS, delay=0.02)
    on_cluster = ("run", str(job), "--scheduler", client.scheduler.address)
    first = pervade_process(*on_cluster, "--quiet", cwd=tmp_path)
    try:
        seen = _wait_for_results(tmp_path / "out" / "results.jsonl", ITEMS // 4)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group(first)
    assert seen < ITEMS, "the run finished before it could be killed"
    assert len(client.scheduler_info()["workers"]) == 2, "the workers outlived the driver"
    output = _finish_and_check(job, tmp_path, seen, *on_cluster[2:], "--quiet")
    assert "(0 loads)" in output, output
