"""pervade's workers as Slurm jobs (`pervade run --cluster slurm`) on a real single-node Slurm
cluster, preempted the ways Slurm preempts: every item is still accepted exactly once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pervade.runtime.batch import BatchConfig
from pervade.runtime.cluster import connect
from tests.helpers.jobs import pervade_process, read_ids, write_jsonl
from tests.helpers.slurm import PREEMPT_GRACE, Slurm, slurm_cluster, unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.slurm, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    reason = unavailable()
    if reason:
        pytest.skip(f"no Slurm test cluster: {reason}")
    with (
        slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster,
        pytest.MonkeyPatch.context() as patch,
    ):
        # sbatch, squeue and scancel, run by pervade and by the tests, find the cluster.
        patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        patch.setenv("COLUMNS", "200")  # the summary on one line per row
        yield cluster


def _job(folder: Path, items: int, delay: float) -> Path:
    """A job whose batch function logs every item it computes (one file per process)."""
    write_jsonl(folder / "items.jsonl", [{"id": f"s{n:04d}", "n": n} for n in range(items)])
    (folder / "computed").mkdir()
    job = folder / "job.toml"
    job.write_text(
        f"""
[job]
function = "tests.helpers.workloads:logged"
input = "items.jsonl"
output = "out/results.jsonl"

[context]
loader = "tests.helpers.workloads:process_context"

[options]
log_dir = "{folder / "computed"}"
delay = {delay}

[dispatch]
min_task_items = 8
max_task_items = 8
# These tests count every computation of an item to show that nothing is redone; tail
# copies redo items on purpose (a copy of a slow task), so they are off here.
speculate = false
"""
    )
    return job


def _start(slurm: Slurm, folder: Path, *flags: str) -> subprocess.Popen[str]:
    process = pervade_process(
        "run", str(folder / "job.toml"), "--cluster", "slurm", "--memory", "2GB", "--quiet",
        *flags, cwd=folder,
    )  # fmt: skip
    return process


def _count(results: Path) -> int:
    """Results written so far (a line being written is not counted yet)."""
    if not results.exists():
        return 0
    return sum(1 for line in results.read_text().split("\n")[:-1] if line.strip())


def _poll(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"pervade did not finish within {timeout} s:\n{out}") from None
    assert process.returncode == 0, out
    return out


def _check_exactly_once(folder: Path, items: int) -> Counter[str]:
    accepted = Counter(read_ids(folder / "out" / "results.jsonl"))
    assert set(accepted) == {f"s{n:04d}" for n in range(items)}
    assert set(accepted.values()) == {1}, "an item was accepted twice"
    logs = (folder / "computed").glob("*.log")
    return Counter(line for log in logs for line in log.read_text().split())


def test_a_job_runs_on_slurm_worker_jobs(slurm: Slurm, tmp_path: Path) -> None:
    _job(tmp_path, items=48, delay=0.01)
    process = _start(slurm, tmp_path, "--workers", "2", "--partition", "low", "--walltime", "10")
    out = _finish(process, timeout=150)
    assert "on 2 Slurm worker jobs" in out
    computed = _check_exactly_once(tmp_path, 48)
    assert max(computed.values()) == 1
    # The workers ran inside Slurm jobs: each job wrote its log in the submit folder.
    job_logs = list(tmp_path.glob("slurm-*.out"))
    assert job_logs and any("Starting Worker" in log.read_text() for log in job_logs)
    values = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").open()]
    assert all(v["n"] == int(v["id"][1:]) for v in values)
    _poll("the worker jobs to be cancelled", lambda: not slurm.jobs(), 30)


def test_worker_jobs_run_one_thread_and_give_the_cores_to_the_model(
    slurm: Slurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the jobs' logs (slurm-JOBID.out) go to the submit folder
    config = BatchConfig(jobs=1, partition="low", cores=2, memory="2GB", grace_seconds=30)
    with connect(batch=config) as client:
        client.wait_for_workers(1, timeout=60)
        threads = client.run(os.getenv, "OMP_NUM_THREADS")
        trim = client.run(os.getenv, "MALLOC_TRIM_THRESHOLD_")
        (worker,) = client.scheduler_info()["workers"].values()
        nanny_plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins), nanny=True)
        assert slurm.jobs("low"), "the worker runs in a Slurm job"
    assert list(threads.values()) == ["2"] and list(trim.values()) == [None]
    assert worker["nthreads"] == 1
    assert list(nanny_plugins.values()) == [["pervade-nanny-drain"]]
    _poll("the worker job to be cancelled", lambda: not slurm.jobs(), 30)


def test_preempted_worker_jobs_drain_and_every_item_is_accepted_once(
    slurm: Slurm, tmp_path: Path
) -> None:
    """One worker job is preempted by a job of a higher-priority partition (Slurm signals it
    and kills it after the partition's GraceTime), the other gets `scancel --full
    --signal=TERM`; both drain, pervade replaces them, and the run finishes."""
    items = 240
    _job(tmp_path, items=items, delay=0.05)
    results = tmp_path / "out" / "results.jsonl"
    process = _start(
        slurm, tmp_path, "--workers", "2", "--cores", "2", "--partition", "low",
        "--grace", str(PREEMPT_GRACE),
    )  # fmt: skip
    try:
        running = _poll("two running worker jobs", lambda: _running(slurm, "low", 2), 90)
        originals = set(running)  # type: ignore[arg-type]
        _poll("some results", lambda: _count(results) >= items // 5, 90)
        slurm.run("sbatch", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 15")
        preempted = _poll(
            "a worker job to be preempted", lambda: originals - set(slurm.jobs("low")), 30
        )
        (other,) = originals - preempted  # type: ignore[operator]
        done = _count(results)
        _poll("results after the preemption", lambda: _count(results) >= done + 16, 90)
        slurm.run("scancel", "--full", "--signal=TERM", other)
        out = _finish(process, timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    computed = _check_exactly_once(tmp_path, items)
    assert max(computed.values()) == 1, "a drained worker's finished item was computed again"
    evictions = re.search(r"(\d+) without notice .*?(\d+) graceful", out, re.S)
    assert evictions, out
    assert (int(evictions[1]), int(evictions[2])) == (0, 2), out
    # Both drained workers left on their own, before Slurm's kill: their jobs completed.
    for job in originals:
        state = slurm.run("scontrol", "show", "job", job)
        assert "JobState=COMPLETED" in state, state


def _running(slurm: Slurm, partition: str, count: int) -> list[str] | None:
    jobs = [job for job, state in slurm.jobs(partition).items() if state == "RUNNING"]
    return jobs if len(jobs) == count else None
