"""`pervade run`: run a job file (or the same through flags) on a Dask cluster.

Exit codes: 0 every item has a result; 1 some items failed (see the errors file);
2 unusable input or configuration (nothing was run); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from pervade.apps.fact_verification.app import accuracy
from pervade.cli.jobfile import check_sections, load_job_file
from pervade.cli.plan import Plan, build_plan
from pervade.core.config import ConfigError
from pervade.journal import Journal, JournalMismatch, Outcome
from pervade.reports.progress import ProgressView
from pervade.reports.summary import print_summary, summary_rows
from pervade.runtime.cluster import SchedulerUnreachable, connect
from pervade.runtime.driver import DriverConfig, RunAborted
from pervade.runtime.output import OutputConflict
from pervade.runtime.session import preflight, run_job
from pervade.sim import cli as sim_cli
from pervade.sim.engine import SimulationError

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130

# flag -> (section, key)
_OVERRIDES = {
    "app": ("job", "app"),
    "function": ("job", "function"),
    "input": ("job", "input"),
    "output": ("job", "output"),
    "errors": ("job", "errors"),
    "journal": ("job", "journal"),
    "model": ("model", "path"),
    "dtype": ("model", "dtype"),
    "batch_size": ("model", "batch_size"),
    "template": ("app", "template"),
    "workers": ("cluster", "workers"),
    "scheduler": ("cluster", "scheduler"),
    "churn": ("cluster", "churn"),
    "grace": ("cluster", "grace"),
    "cluster": ("cluster", "kind"),
    "partition": ("cluster", "partition"),
    "walltime": ("cluster", "walltime"),
    "cores": ("cluster", "cores"),
    "memory": ("cluster", "memory"),
    "gpus": ("cluster", "gpus"),
    "sbatch": ("cluster", "sbatch"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pervade", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(commands)
    run = commands.add_parser("run", help="run a job: a job file, flags, or both")
    run.add_argument("job", nargs="?", type=Path, help="job file (TOML)")
    run.add_argument("--app", help="bundled application (fact-verification)")
    run.add_argument("--function", help="batch function, 'package.module:function'")
    run.add_argument("--input", help="input JSONL file")
    run.add_argument("--output", help="results JSONL file (errors go beside it)")
    run.add_argument("--errors", help="errors JSONL file")
    run.add_argument("--journal", help="journal file (SQLite); rerun with it to resume")
    run.add_argument("--model", help="local Hugging Face model folder, or bundled:NAME")
    run.add_argument("--dtype", help="auto, bfloat16, float16 or float32")
    run.add_argument("--batch-size", type=int, help="prompts per forward pass")
    run.add_argument("--template", help="prompt template file")
    run.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local cluster (default: one per GPU, 2 without GPUs), "
        "or worker jobs (default 2)",
    )
    run.add_argument("--scheduler", help="address of an existing Dask scheduler to use instead")
    run.add_argument(
        "--churn",
        help="evict and replace local workers while running: "
        "rate:mtbe=SECONDS[,graceful=SHARE][,rejoin=SECONDS][,seed=N], or "
        "trace:NAME_OR_PATH[,start=..][,fit=..|speed=..][,graceful=..][,seed=N] (see README)",
    )
    run.add_argument(
        "--grace", type=float, help="seconds a worker has from SIGTERM to its kill (60)"
    )
    jobs = run.add_argument_group("worker jobs of a batch system (--cluster slurm)")
    jobs.add_argument(
        "--cluster", choices=("local", "slurm"), help="where workers run (default: local)"
    )
    jobs.add_argument("--partition", help="Slurm partition of the worker jobs")
    jobs.add_argument("--walltime", help="time limit of each job, e.g. 04:00:00")
    jobs.add_argument("--cores", type=int, help="CPU cores per worker job (1)")
    jobs.add_argument("--memory", help="memory per worker job, e.g. 16GB (4GB)")
    jobs.add_argument("--gpus", type=int, help="GPUs per worker job (0)")
    jobs.add_argument(
        "--sbatch",
        action="append",
        metavar="OPTION",
        help="a further sbatch option for the worker jobs, e.g. --sbatch=--account=lab "
        "(repeatable)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


def _sections(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], Path]:
    if args.job is not None:
        sections = load_job_file(args.job)
        base = args.job.resolve().parent
    else:
        sections, base = {}, Path.cwd()
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in _OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            if flag in ("input", "output", "errors", "journal", "template") or (
                flag == "model" and not str(value).startswith("bundled:")
            ):
                value = str(Path(value).expanduser().resolve())  # flags are relative to cwd
            overrides.setdefault(section, {})[key] = value
    if overrides.get("job", {}).get("function"):
        sections.setdefault("job", {}).pop("app", None)
    if overrides.get("job", {}).get("app"):
        sections.setdefault("job", {}).pop("function", None)
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return check_sections(sections, "command line"), base


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if args.command == "simulate":
        try:
            sim_cli.main(args)
        except (ConfigError, SimulationError) as exc:
            console.print(f"pervade: error: {exc}", markup=False)
            return EXIT_UNUSABLE
        return EXIT_OK
    try:
        sections, base = _sections(args)
        plan = build_plan(sections, base, lambda text: console.print(text))
    except ConfigError as exc:
        message = str(exc)
        if args.job is not None and str(args.job) not in message:
            message = f"{args.job}: {message}"
        console.print(f"pervade: error: {message}", markup=False)
        return EXIT_UNUSABLE
    return _run(plan, console, quiet=args.quiet)


def _run(plan: Plan, console: Console, quiet: bool) -> int:
    where = plan.cluster.scheduler or f"a local Dask cluster of {plan.cluster.workers} workers"
    if plan.cluster.batch is not None:
        batch = plan.cluster.batch
        where = f"{batch.jobs} Slurm worker jobs"
        if batch.workers_per_job > 1:
            where += f" of {batch.workers_per_job} workers each (one per GPU)"
    console.print(f"Running {plan.job.name} over {plan.input} on {where}", markup=False)
    started = time.monotonic()
    view = ProgressView(sys.stderr, plain_every=0 if quiet else 10.0)
    try:
        preflight(plan.job, plan.input, plan.output, plan.errors, plan.journal)
        with connect(
            plan.cluster.scheduler,
            plan.cluster.workers,
            plan.cluster.dashboard,
            churn=plan.cluster.churn,
            grace_seconds=plan.cluster.grace_seconds,
            batch=plan.cluster.batch,
            preload=plan.job.worker_modules,
        ) as client:
            if plan.cluster.dashboard:
                console.print(f"Dashboard: {client.dashboard_link}")
            with view:
                stats = run_job(
                    client,
                    plan.job,
                    plan.input,
                    plan.parse,
                    plan.output,
                    plan.errors,
                    plan.journal,
                    observer=None if quiet else view,
                    config=DriverConfig(grace_seconds=plan.cluster.grace_seconds),
                )
    except (JournalMismatch, OutputConflict, RunAborted, SchedulerUnreachable) as exc:
        console.print(f"pervade: error: {exc}", markup=False)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        console.print(
            "pervade: interrupted; every accepted result is in the journal. "
            "Run the same command again to finish the rest."
        )
        return EXIT_INTERRUPTED
    wall = time.monotonic() - started
    correct_labelled = None
    # Errors of earlier runs of this job count too: exit 0 means every item has a result.
    journal = Journal(plan.journal, plan.job.fingerprint(str(plan.input.resolve())))
    try:
        errors_total = journal.count(Outcome.ERROR)
        if plan.app is not None:
            found = accuracy(journal.outcomes(Outcome.RESULT))
            correct_labelled = (found.correct, found.labelled)
    finally:
        journal.close()
    paths = {"results": plan.output, "errors": plan.errors, "journal": plan.journal}
    rows = summary_rows(stats, wall, correct_labelled, paths)
    print_summary(Console(highlight=False), f"pervade: {plan.job.name}", rows)
    if errors_total:
        console.print(
            f"{errors_total} items failed; their errors are in {plan.errors}", markup=False
        )
        return EXIT_ITEMS_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
