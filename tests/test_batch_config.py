"""Worker jobs of a batch system: options validated before anything is submitted, and the
job descriptions pervade generates for Slurm and HTCondor."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pervade.cli.main import main
from pervade.runtime.batch import BatchConfig, htcondor_cluster, slurm_cluster
from tests.helpers.jobs import generic_job


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", *args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--cluster", "slurm", "--walltime", "4h"], "cluster.walltime must be MINUTES"),
        (["--cluster", "slurm", "--cores", "0"], "cluster.cores must be at least 1"),
        (["--cluster", "slurm", "--memory", "lots"], "cluster.memory must be an amount"),
        (["--cluster", "slurm", "--gpus", "-1"], "cluster.gpus must be 0 or more"),
        (["--cluster", "slurm", "--partition", "a b"], "cluster.partition is not a partition"),
        (["--cluster", "slurm", "--sbatch", "account=x"], "cluster.sbatch entries are sbatch"),
        (["--cluster", "slurm", "--grace", "70000"], "cluster.grace must be between"),
        (["--cluster", "slurm", "--scheduler", "tcp://h:8786"], "drop cluster.scheduler"),
        (["--partition", "gpu"], "cluster.partition applies to worker jobs"),
    ],
)
def test_bad_worker_job_options_are_refused_with_the_offending_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    job = generic_job(tmp_path, items=4)
    code, text = _run(capsys, str(job), *flags)
    assert code == 2
    assert expected in text
    assert not (tmp_path / "out").exists(), "nothing may run on a bad configuration"


def test_a_job_file_names_the_cluster_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = generic_job(tmp_path, items=4)
    job.write_text(job.read_text().replace("[cluster]\n", "[cluster]\nkind = 'pbs'\n"))
    code, text = _run(capsys, str(job))
    assert code == 2 and "cluster.kind must be one of local, slurm, got 'pbs'" in text


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    clusters: list[Any] = []
    yield clusters
    for cluster in clusters:
        cluster.close()


OPTIONS = BatchConfig(
    partition="gpu",
    walltime="04:00:00",
    cores=8,
    memory="32GB",
    gpus=1,
    directives=("--account=lab",),
    grace_seconds=90,
)


def test_the_slurm_job_script_execs_the_worker_and_asks_for_the_notice(
    closing: list[Any],
) -> None:
    cluster = slurm_cluster(OPTIONS)
    closing.append(cluster)
    lines = cluster.job_script().splitlines()
    for directive in (
        "-p gpu",
        "--cpus-per-task=8",
        "-t 04:00:00",
        "--signal=B:TERM@90",
        "--requeue",
        "--gres=gpu:1",
        "--account=lab",
    ):
        assert f"#SBATCH {directive}" in lines
    assert "export OMP_NUM_THREADS=8 MKL_NUM_THREADS=8 OPENBLAS_NUM_THREADS=8" in lines
    command = lines[-1]
    assert command.startswith(f"exec {sys.executable} -m distributed.cli.dask_worker ")
    assert "--nthreads 1" in command and "--nanny" in command


def test_a_job_of_several_gpus_runs_a_worker_on_each(closing: list[Any]) -> None:
    # A worker computes on one GPU; a job given four would leave three idle.
    cluster = slurm_cluster(BatchConfig(cores=8, memory="64GB", gpus=4))
    closing.append(cluster)
    lines = cluster.job_script().splitlines()
    assert "#SBATCH --gres=gpu:4" in lines and "#SBATCH --cpus-per-task=8" in lines
    assert "export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2" in lines
    command = lines[-1]
    assert "--nworkers 4" in command and "--nthreads 1" in command
    assert "--memory-limit 14.90GiB" in command  # 64 GB in four


def test_without_a_walltime_the_partition_default_applies(closing: list[Any]) -> None:
    cluster = slurm_cluster(BatchConfig())
    closing.append(cluster)
    script = cluster.job_script()
    assert "#SBATCH -t" not in script and "--gres" not in script
    assert "#SBATCH --signal=B:TERM@60" in script


def test_the_htcondor_submit_description_asks_for_gpus_and_a_soft_kill(
    closing: list[Any],
) -> None:
    options = BatchConfig(cores=8, memory="32GB", gpus=1, grace_seconds=90)
    cluster = htcondor_cluster(options, disk="20GB", submit={"accounting_group": "lab"})
    closing.append(cluster)
    lines = cluster.job_script().splitlines()
    for line in (
        "request_gpus = 1",
        "RequestCpus = 8",
        "kill_sig = SIGTERM",
        "job_max_vacate_time = 90",
        "want_graceful_removal = true",
        "accounting_group = lab",
        "MY.DaskWorkerCores = 1",
        "Executable = /bin/sh",
    ):
        assert line in lines
    (arguments,) = [line for line in lines if line.startswith("Arguments = ")]
    # /bin/sh runs the prologue, then becomes the worker's nanny, which gets the soft kill.
    assert "; exec " + sys.executable + " -m distributed.cli.dask_worker " in arguments
