"""Workers from a batch system through dask-jobqueue: one Dask worker per batch job.

What pervade sets on every worker job, and why:
- the job script `exec`s the `dask worker` CLI, so its nanny is the job's own process and
  gets the batch system's notice (Slurm's `--signal=B:...`, HTCondor's soft kill); the
  NannyDrainPlugin turns that notice into a graceful drain;
- Slurm sends SIGTERM `grace` seconds before the job's end (`--signal=B:TERM@grace`), which
  covers the walltime's end and, with `SlurmctldParameters=preempt_send_user_signal`, a
  preemption; `--requeue` lets a preempted or failed node's job come back;
- one thread per worker (the job's cores go to the model's threads, as on the local
  cluster), and no MALLOC_TRIM_THRESHOLD_ in the worker (it slowed torch inference);
- a lost worker's job is cancelled only after LOST_WORKER_TIMEOUT (Dask's default, 15 s,
  would cancel a requeued job before it can start again); jobs the batch system no longer
  lists (drained and ended, cancelled, past their walltime) are replaced, so the pool keeps
  its size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask.utils import parse_bytes

from pervade.core.config import ConfigError

LOST_WORKER_TIMEOUT = "600s"
KEEPER_INTERVAL = 5.0  # seconds between looks at the batch queue
JOB_NAME = "pervade-worker"
_SLURM_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")  # Slurm's --time formats
SLURM_MAX_SIGNAL_SECONDS = 65535

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Worker jobs of a batch system; the field names are the job file's [cluster] keys.

    jobs: worker jobs kept queued or running.
    partition: Slurm partition (None: the site's default).
    walltime: job time limit in Slurm's format (None: the partition's default).
    cores / memory / gpus: what each job asks for. A job runs one Dask worker per GPU (one
        without GPUs), each on its own GPU with one Dask thread; the workers share the
        job's cores and memory evenly, the cores going to the model's threads.
    directives: further `#SBATCH` options, each as on the sbatch command line.
    grace_seconds: the time the batch system gives between its notice and the kill.
    """

    jobs: int = 1
    partition: str | None = None
    walltime: str | None = None
    cores: int = 1
    memory: str = "4GB"
    gpus: int = 0
    directives: tuple[str, ...] = ()
    grace_seconds: float = 60.0
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"cluster.workers must be at least 1 worker job, got {self.jobs}")
        if self.partition is not None and not re.fullmatch(r"[\w.,-]+", self.partition):
            raise ConfigError(f"cluster.partition is not a partition name: {self.partition!r}")
        if self.walltime is not None and not _SLURM_TIME.match(self.walltime):
            raise ConfigError(
                f"cluster.walltime must be MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]], "
                f"got {self.walltime!r}"
            )
        if self.cores < 1:
            raise ConfigError(f"cluster.cores must be at least 1, got {self.cores}")
        try:
            memory = parse_bytes(self.memory)
        except (ValueError, TypeError):
            memory = 0
        if memory < 2**20:
            raise ConfigError(
                f"cluster.memory must be an amount like '16GB' (at least 1 MiB), "
                f"got {self.memory!r}"
            )
        if self.gpus < 0:
            raise ConfigError(f"cluster.gpus must be 0 or more, got {self.gpus}")
        for directive in self.directives:
            if not directive.startswith("-") or "\n" in directive:
                raise ConfigError(
                    f"cluster.sbatch entries are sbatch options like '--account=lab', "
                    f"got {directive!r}"
                )
        if not 0 < self.grace_seconds <= SLURM_MAX_SIGNAL_SECONDS:
            raise ConfigError(
                f"cluster.grace must be between 0 and {SLURM_MAX_SIGNAL_SECONDS} seconds, "
                f"got {self.grace_seconds}"
            )

    @property
    def grace_whole_seconds(self) -> int:
        return math.ceil(self.grace_seconds)

    @property
    def workers_per_job(self) -> int:
        """One worker per GPU: a worker computes on one GPU, so a job of several GPUs runs
        several workers (each claims its own, `pervade.worker.gpus`)."""
        return max(1, self.gpus)

    @property
    def cores_per_worker(self) -> int:
        return max(1, self.cores // self.workers_per_job)


def worker_prologue(cores: int) -> list[str]:
    """Job-script lines before the worker starts: the model's threads get the job's cores.

    The nanny copies its `pre-spawn-environ` into the worker; a variable set in the job's
    environment overrides its value there, and None removes it (Dask sets
    MALLOC_TRIM_THRESHOLD_, which made torch inference in workers nearly twice as slow).
    The job also inherits the submitting process's environment, where a local Dask nanny
    may have left that variable: it is unset too.
    """
    threads = " ".join(f"{name}={cores}" for name in _THREAD_VARIABLES)
    return [
        f"export {threads}",
        "unset MALLOC_TRIM_THRESHOLD_",
        "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\"",
    ]


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _common(config: BatchConfig, dashboard: bool) -> dict[str, Any]:
    workers = config.workers_per_job
    return {
        # Dask threads: one task at a time per worker, like the local cluster's workers.
        "cores": workers,
        "processes": workers,
        "memory": config.memory,  # dask-jobqueue splits it among the job's workers
        # `exec` makes the worker's nanny the job's process, so the notice reaches it.
        "python": f"exec {config.python}",
        "job_name": JOB_NAME,
        "job_script_prologue": worker_prologue(config.cores_per_worker),
        "worker_extra_args": ["--no-dashboard"],
        "scheduler_options": {"dashboard_address": ":8787" if dashboard else ":0"},
    }


def slurm_cluster(config: BatchConfig, dashboard: bool = False) -> Any:
    """A dask-jobqueue SLURMCluster for `config`, with no jobs submitted yet."""
    from dask_jobqueue.slurm import SLURMCluster

    directives = [f"--signal=B:TERM@{config.grace_whole_seconds}", "--requeue"]
    if config.gpus:
        directives.append(f"--gres=gpu:{config.gpus}")
    directives += config.directives
    return SLURMCluster(
        **_common(config, dashboard),
        queue=config.partition,
        walltime=config.walltime,
        job_cpu=config.cores,
        job_extra_directives=directives,
        # dask-jobqueue's default walltime (30 min) would override the partition's.
        job_directives_skip=[] if config.walltime else ["#SBATCH -t "],
    )


def htcondor_cluster(
    config: BatchConfig,
    disk: str = "10GB",
    submit: Mapping[str, Any] | None = None,
    dashboard: bool = False,
) -> Any:
    """The HTCondor equivalent: a dask-jobqueue HTCondorCluster for `config`, with further
    submit commands in `submit` (`config.directives` are sbatch options and must be empty).

    HTCondor sends `kill_sig` (the soft kill) when it vacates or removes a job and kills it
    `job_max_vacate_time` seconds later; `request_gpus` asks for the GPUs. A vacated job
    runs again later under its old worker name, as a requeued Slurm job does.
    """
    from dask_jobqueue.htcondor import HTCondorCluster

    if config.directives:
        raise ConfigError("sbatch options do not apply to HTCondor: pass submit commands")
    commands: dict[str, Any] = {
        "RequestCpus": config.cores,  # dask-jobqueue would ask for the worker's threads
        "kill_sig": "SIGTERM",
        "job_max_vacate_time": config.grace_whole_seconds,
        "want_graceful_removal": "true",
    }
    if config.gpus:
        commands["request_gpus"] = config.gpus
    commands.update(submit or {})
    return HTCondorCluster(**_common(config, dashboard), disk=disk, job_extra_directives=commands)


class SlurmJobKeeper:
    """Keeps `jobs` worker jobs queued or running on a SLURMCluster's event loop.

    A job that Slurm no longer lists (its worker drained and exited, or it was cancelled,
    failed or reached its walltime) is replaced by a new job under a fresh worker name; a
    job Slurm still lists, such as a requeued one waiting to start again, is left alone.
    """

    def __init__(self, cluster: Any, jobs: int, interval: float = KEEPER_INTERVAL) -> None:
        self.cluster = cluster
        self.jobs = jobs
        self.interval = interval
        self.replaced = 0
        self._added = 0
        self._task: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Run on the cluster's event loop, where dask-jobqueue changes its jobs too."""
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self.cluster.loop.asyncio_loop)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:  # squeue may fail now and then; look again later
                logger.warning("pervade: could not check the worker jobs: %s", exc)

    async def check(self) -> None:
        # Only jobs submitted before squeue ran can be missing from its answer.
        known = {
            name: job.job_id
            for name, job in self.cluster.workers.items()
            if getattr(job, "job_id", None)
        }
        listed = await self._listed()
        gone = [name for name, job_id in known.items() if job_id not in listed]
        for name in gone:
            job = self.cluster.workers.pop(name, None)
            self.cluster.worker_spec.pop(name, None)
            if job is None:  # closed meanwhile by dask-jobqueue itself
                continue
            with contextlib.suppress(Exception):
                await job.close()  # forgets it; scancel of an ended job is a no-op
            self.replaced += 1
            logger.info("pervade: worker job %s ended; submitting a replacement", job.job_id)
        missing = self.jobs - len(self.cluster.worker_spec)
        for _ in range(missing):
            # A fresh worker name: the ended job's worker may still be listed under its
            # name (until its heartbeats are missed), and the scheduler refuses a second
            # worker of one name.
            self._added += 1
            self.cluster.worker_spec[f"{JOB_NAME}-r{self._added}"] = self.cluster.new_spec
        # Submits the jobs the spec lacks, including one Dask dropped after its
        # lost-worker-timeout (it keeps the name in the spec but forgets the job).
        if set(self.cluster.worker_spec) - set(self.cluster.workers):
            self.cluster.scale(jobs=self.jobs)

    async def _listed(self) -> set[str]:
        process = await asyncio.create_subprocess_exec(
            "squeue", "--me", "--noheader", "--format=%i",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"squeue failed: {err.decode().strip()}")
        return set(out.decode().split())


__all__ = [
    "LOST_WORKER_TIMEOUT",
    "BatchConfig",
    "SlurmJobKeeper",
    "htcondor_cluster",
    "slurm_cluster",
    "worker_prologue",
]
