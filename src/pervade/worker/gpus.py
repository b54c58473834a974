"""One GPU per worker process on a node with several.

A batch system that gives each worker job its own GPU says so in CUDA_VISIBLE_DEVICES (one
device): nothing to do. The worker processes of a local cluster all see every GPU of the
node, and would all compute on the first one. Each such process claims the first GPU that
no other live worker of the node holds (a lock file per GPU, released by the kernel when
the process dies, so a replacement takes its predecessor's GPU) and narrows
CUDA_VISIBLE_DEVICES to it. CUDA reads that variable once, when it initializes in the
process, so the claim must come before anything touches CUDA: the worker plugin makes it
first thing. GPUs are counted through NVML (`torch.cuda.device_count`), which does not
initialize CUDA.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
LOCKS_ENV = "PERVADE_GPU_LOCKS"
CLASS_ENV = "PERVADE_GPU_CLASS"


class GpuClaim:
    """This process's claim on one of the node's GPUs; the lock is held while it lives."""

    def __init__(self) -> None:
        self.gpu: str | None = None
        self._fd: int | None = None

    def take(self, lock_dir: Path | None = None) -> str | None:
        """Claim a GPU and narrow CUDA_VISIBLE_DEVICES to it; the GPU's id, or None when
        there is nothing to choose (one GPU or none, or CUDA already in use here)."""
        if self.gpu is not None:
            return self.gpu
        gpus = visible_gpus()
        if len(gpus) < 2:
            return None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            logger.warning(
                "pervade: CUDA was initialized in this worker before it could claim one of "
                "GPUs %s; it uses CUDA's current device, which other workers may share",
                ",".join(gpus),
            )
            return None
        folder = lock_dir or default_lock_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for gpu in gpus:
            fd = os.open(folder / f"gpu-{_safe(gpu)}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd = fd  # open for the life of the claim: closing it frees the GPU
            return self._narrow(gpu)
        # More workers than GPUs: share them, spread by process id.
        gpu = gpus[os.getpid() % len(gpus)]
        logger.warning("pervade: every GPU of this node has a worker; this one shares GPU %s", gpu)
        return self._narrow(gpu)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self.gpu = None

    def _narrow(self, gpu: str) -> str:
        os.environ[VISIBLE_ENV] = gpu
        self.gpu = gpu
        return gpu


def visible_gpus() -> list[str]:
    """The ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or
    their indices), without initializing CUDA."""
    listed = os.environ.get(VISIBLE_ENV)
    if listed is not None:
        return _listed(listed)
    torch = sys.modules.get("torch")  # a worker without torch has no GPU for us to place
    if torch is None:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]


def node_gpus(driver_listing: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """How many GPUs the workers started here may use, counted without torch or CUDA: those
    CUDA_VISIBLE_DEVICES names, else those the NVIDIA driver lists."""
    listed = os.environ.get(VISIBLE_ENV)
    if listed is not None:
        return len(_listed(listed))
    try:
        return sum(1 for _ in driver_listing.iterdir())
    except OSError:  # no NVIDIA driver on this machine
        return 0


def gpu_class() -> str:
    """The kind of device this worker computes on, for the dispatcher's per-class speed
    and eviction hazard: `$PERVADE_GPU_CLASS` when set (a batch system can pass its own
    name for the machine's GPU), else the CUDA device's name once CUDA runs in this process
    ("nvidia-h100-80gb-hbm3"), else "" (not known yet, or no GPU). Asking never starts
    CUDA: before the first context is built, the claim above must come first."""
    explicit = os.environ.get(CLASS_ENV, "").strip()
    if explicit:
        return explicit
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return ""
    try:
        name = str(torch.cuda.get_device_name())
    except Exception:  # a broken device: its context host reports that on its own
        return ""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def default_lock_dir() -> Path:
    """`$PERVADE_GPU_LOCKS`, else a per-user folder in /tmp (node-local, like the GPUs), one
    per batch job: a batch system that confines a job to its GPUs numbers them from 0 in
    every job, so GPU 0 of two jobs on one node are two different GPUs."""
    explicit = os.environ.get(LOCKS_ENV)
    if explicit:
        return Path(explicit)
    scratch = os.environ.get("_CONDOR_SCRATCH_DIR")  # HTCondor: the job's own sandbox
    if scratch:
        return Path(scratch) / ".pervade-gpus"
    mine = Path("/tmp") / f"pervade-{os.getuid()}"
    job = os.environ.get("SLURM_JOB_ID")
    return mine / f"gpus-slurm-{_safe(job)}" if job else mine / "gpus"


def _listed(visible: str) -> list[str]:
    """The devices a CUDA_VISIBLE_DEVICES value names, as CUDA reads it: up to its first
    empty or negative entry ("-1" hides every GPU)."""
    gpus: list[str] = []
    for gpu in (entry.strip() for entry in visible.split(",")):
        if not gpu or gpu.startswith("-"):
            break
        gpus.append(gpu)
    return gpus


def _safe(gpu: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)


# The claim of this worker process.
CLAIM = GpuClaim()
