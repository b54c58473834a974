"""A real single-node Slurm cluster (munged, slurmctld, slurmd from Debian's slurm-wlm) for
tests, started as root from a temporary folder and torn down completely.

No systemd, cgroups or accounting: processes are tracked by /proc, tasks are not bound, and
the node's CPUs come from the configuration, not the hardware. Two partitions share the
node: ``low`` (the default) is preempted by ``high`` with a grace time, the way an
opportunistic partition is, and its jobs are requeued.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
NODE = "pervade-node"
CPUS = 4
MEMORY_MB = 8000
PREEMPT_GRACE = 20  # seconds a preempted job of the low partition has from SIGTERM to the kill


# The daemons live in /usr/sbin, which not every PATH holds.
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def unavailable() -> str | None:
    """Why a Slurm cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the Slurm daemons need root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=_PATH) is None]
    if missing:
        return f"slurm-wlm and munge are not installed (no {', '.join(missing)})"
    return None


@dataclass
class Slurm:
    folder: Path
    env: dict[str, str]  # what client commands (and pervade, through them) need

    def run(self, *args: str, timeout: float = 30.0) -> str:
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self, partition: str | None = None) -> dict[str, str]:
        """Job id -> state of the jobs Slurm still knows as queued or running."""
        args = ["squeue", "-h", "-o", "%i %T"] + (["-p", partition] if partition else [])
        lines = self.run(*args).split()
        return dict(zip(lines[0::2], lines[1::2], strict=True))

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", NODE, "-o", "%T").strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(folder: Path, ctld_port: int, slurmd_port: int) -> str:
    return f"""
ClusterName=pervade-test
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} State=UNKNOWN
PartitionName=low Nodes={NODE} Default=YES PriorityTier=1 PreemptMode=REQUEUE \
GraceTime={PREEMPT_GRACE} MaxTime=INFINITE State=UP
PartitionName=high Nodes={NODE} PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP
"""


def _wait(
    what: str,
    check: object,
    timeout: float,
    logs: list[Path],
    processes: Sequence[subprocess.Popen[bytes]] = (),
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [str(p.args[0]) for p in processes if p.poll() is not None]  # type: ignore[index]
        if dead:
            what = f"{dead[0]} exited before {what.split(' did not ')[0]} was ready"
            break
        try:
            if check():  # type: ignore[operator]
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{_tail(log)}" for log in logs)
    raise RuntimeError(f"Slurm test cluster: {what} within {timeout} s\n{tails}")


def _tail(path: Path, lines: int = 15) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


@contextmanager
def slurm_cluster(folder: Path) -> Iterator[Slurm]:
    """munged, slurmctld and slurmd on this machine, configured in `folder`, until exit."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # munged refuses key and socket folders that others may write
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, _free_port(), _free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": _PATH}
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> None:
        processes.append(
            subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    slurm = Slurm(folder, env)
    logs = [folder / "munged.log", folder / "slurmctld.log", folder / "slurmd.log"]
    try:
        start(
            "munged", "--foreground", "--force", f"--socket={folder}/munge.socket",
            f"--key-file={key}", f"--pid-file={folder}/munged.pid",
            f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed",
        )  # fmt: skip
        _wait(
            "munged did not open its socket", (folder / "munge.socket").exists, 10, logs, processes
        )
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-N", NODE, "-f", str(conf))
        _wait(
            "the node did not become idle",
            lambda: slurm.node_state() == "idle",
            60,
            logs,
            processes,
        )
        yield slurm
    finally:
        _cancel_all(slurm)
        for process in reversed(processes):  # slurmd, slurmctld, then munged
            _stop(process)


def _cancel_all(slurm: Slurm) -> None:
    """Cancel every job and wait (briefly) until slurmd has killed their processes."""
    try:
        slurm.run("scancel", "--full", "--signal=KILL", "-u", "root")
        slurm.run("scancel", "-u", "root")
        _wait("jobs did not end", lambda: not slurm.jobs(), 20, [])
    except (RuntimeError, subprocess.TimeoutExpired):
        pass  # the daemons are going away; stragglers are killed with the session below


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            # Its own session: the daemon and anything it started (job scripts) go together.
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
