"""`pervade simulate`: one job (or several models) on a simulated pool, under churn or a real
trace, by one policy or several side by side; prints the table and optionally plots it. Bad
input is a `ConfigError` naming the flag (the CLI prints it, exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from pervade.core.cache_policy import parse_size
from pervade.core.config import ConfigError
from pervade.sim.engine import simulate
from pervade.sim.model import POLICIES, GpuClass, Job, Loads, Pool, Scenario
from pervade.sim.result import SimResult, table
from pervade.traces import load_churn

CLASSES_USAGE = "NAME:COUNT[:SPEED[:MEMORY]],... e.g. a100:32:1.0:80GB,h100:16:2.5"
MODELS_USAGE = "NAME:SIZE:WORK:ITEMS,... e.g. big:16GB:0.5:100000,small:2GB:0.1:50000"


def add_parser(commands: Any) -> None:
    """Add the `simulate` subcommand to the CLI's subparsers."""
    sim = commands.add_parser("simulate", help="simulate a job on a pool of GPUs that churns")
    job = sim.add_argument_group("the job")
    job.add_argument("--items", type=int, default=None, help="items of the job (100000)")
    job.add_argument("--work", type=float, default=None, help="seconds per item at speed 1 (0.5)")
    job.add_argument("--model-size", default=None, help="the model's bytes (16GB)")
    job.add_argument(
        "--models",
        default=None,
        metavar="SPEC",
        help=f"several models sharing the pool: {MODELS_USAGE}",
    )
    pool = sim.add_argument_group("the pool")
    pool.add_argument("--gpus", default="g:64", help=f"GPU classes: {CLASSES_USAGE}")
    pool.add_argument("--churn", default=None, help="rate:mtbe=... or trace:NAME,... (see run)")
    pool.add_argument("--grace", type=float, default=30.0, help="seconds of eviction notice")
    pool.add_argument("--host-seconds", type=float, default=5.0, help="build from host memory")
    pool.add_argument("--peer-bandwidth", default="2GB", help="bytes/s of one peer copy")
    pool.add_argument("--origin-bandwidth", default="2GB", help="bytes/s of the origin, shared")
    pool.add_argument("--origin-streams", type=int, default=8, help="origin reads at a time")
    pool.add_argument(
        "--task-overhead", type=float, default=0.5, help="seconds per task beyond its items"
    )
    policy = sim.add_argument_group("the policy")
    policy.add_argument("--policy", choices=POLICIES, default=None, help="(default: pervade)")
    policy.add_argument(
        "--compare",
        nargs="?",
        const=",".join(POLICIES),
        default=None,
        metavar="POLICY,...",
        help=f"run several policies on the same pool, one row each (default: {','.join(POLICIES)})",
    )
    policy.add_argument("--naive", action="store_true", help="same as --policy naive")
    policy.add_argument(
        "--batch", type=int, default=None, metavar="N", help="user batch size (items a task)"
    )
    policy.add_argument(
        "--static", type=int, default=None, metavar="N", help="static: GPUs (all of --gpus)"
    )
    policy.add_argument(
        "--queue-wait", type=float, default=None, metavar="S", help="static: seconds queued"
    )
    out = sim.add_argument_group("output")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    out.add_argument("--plot", type=Path, default=None, metavar="PATH.png", help="write the plots")
    out.add_argument(
        "--html", type=Path, default=None, metavar="PATH.html", help="write table and plots"
    )


def parse_classes(text: str) -> tuple[GpuClass, ...]:
    classes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        if not 2 <= len(fields) <= 4 or not fields[0]:
            raise ConfigError(f"--gpus {part!r}: write {CLASSES_USAGE}")
        try:
            count = int(fields[1])
            speed = float(fields[2]) if len(fields) > 2 else 1.0
        except ValueError:
            raise ConfigError(f"--gpus {part!r}: count and speed are numbers") from None
        memory = parse_size(fields[3], "--gpus memory") if len(fields) > 3 else 80 * 10**9
        classes.append(GpuClass(fields[0], count, speed, memory))
    if not classes:
        raise ConfigError(f"--gpus: name at least one class: {CLASSES_USAGE}")
    return tuple(classes)


def parse_models(text: str) -> tuple[Job, ...]:
    jobs: list[Job] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        if len(fields) != 4 or not fields[0]:
            raise ConfigError(f"--models {part!r}: write {MODELS_USAGE}")
        name = fields[0]
        size = parse_size(fields[1], f"--models {name} size")
        try:
            work, items = float(fields[2]), int(fields[3])
        except ValueError:
            raise ConfigError(
                f"--models {part!r}: WORK (seconds per item) and ITEMS are numbers"
            ) from None
        if any(j.context == name for j in jobs):
            raise ConfigError(f"--models: the name {name!r} is given twice")
        try:
            jobs.append(Job(items, work, size, context=name))
        except ConfigError as exc:
            raise ConfigError(f"--models {part!r}: {exc}") from None
    if not jobs:
        raise ConfigError(f"--models: name at least one model: {MODELS_USAGE}")
    return tuple(jobs)


def policies(args: argparse.Namespace) -> tuple[str, ...]:
    """The policies the flags ask for, in order."""
    if args.compare is not None:
        if args.policy is not None or args.naive:
            raise ConfigError("--compare runs several policies: leave out --policy and --naive")
        names = tuple(filter(None, (p.strip() for p in args.compare.split(","))))
        unknown = [n for n in names if n not in POLICIES]
        if unknown or not names:
            raise ConfigError(
                f"--compare {args.compare!r}: policies are {', '.join(POLICIES)} (comma-separated)"
            )
        return tuple(dict.fromkeys(names))
    if args.naive and args.policy not in (None, "naive"):
        raise ConfigError(f"--naive contradicts --policy {args.policy}")
    return ("naive",) if args.naive else (args.policy or "pervade",)


def _jobs(args: argparse.Namespace) -> Job | tuple[Job, ...]:
    if args.models is not None:
        given = [f for f, v in (("--items", args.items), ("--work", args.work),
                                ("--model-size", args.model_size)) if v is not None]  # fmt: skip
        if given:
            raise ConfigError(f"--models gives each model's items, work and size: drop {given[0]}")
        return parse_models(args.models)
    return Job(
        100_000 if args.items is None else args.items,
        0.5 if args.work is None else args.work,
        parse_size(args.model_size or "16GB", "--model-size"),
    )


def scenario(args: argparse.Namespace, policy: str | None = None) -> Scenario:
    """The scenario the flags describe, run by `policy` (by default the first asked for)."""
    names = policies(args)
    if "static" not in names:
        for flag, value in (("--static", args.static), ("--queue-wait", args.queue_wait)):
            if value is not None:
                raise ConfigError(f"{flag} describes the static policy: add --policy static")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be a positive number of items, got {args.batch}")
    if args.queue_wait is not None and args.queue_wait < 0:
        raise ConfigError(f"--queue-wait must be >= 0 seconds, got {args.queue_wait:g}")
    if args.task_overhead < 0:
        raise ConfigError(f"--task-overhead must be >= 0 seconds, got {args.task_overhead:g}")
    loads = Loads(
        host_seconds=args.host_seconds,
        peer_bandwidth=parse_size(args.peer_bandwidth, "--peer-bandwidth"),
        origin_bandwidth=parse_size(args.origin_bandwidth, "--origin-bandwidth"),
        origin_streams=args.origin_streams,
    )
    pool = Pool(parse_classes(args.gpus), loads, args.task_overhead)
    if args.static is not None and not 1 <= args.static <= pool.size:
        raise ConfigError(f"--static {args.static}: between 1 and the {pool.size} GPUs of --gpus")
    if args.grace < 0:
        raise ConfigError(f"--grace must be >= 0 seconds, got {args.grace:g}")
    if args.sample <= 0:
        raise ConfigError(f"--sample must be positive seconds, got {args.sample:g}")
    churn = None
    if args.churn:
        churn = load_churn(args.churn, pool.size)
    return Scenario(
        _jobs(args),
        pool,
        churn,
        args.seed,
        policy=policy or names[0],
        batch=args.batch,
        static_gpus=args.static,
        queue_wait_seconds=args.queue_wait or 0.0,
        grace_seconds=args.grace,
        sample_seconds=args.sample,
    )


def _name(args: argparse.Namespace, base: Scenario) -> str:
    if base.policy == "static":
        gpus = base.static_gpus or base.pool.size
        return f"static {gpus} GPUs, queued {base.queue_wait_seconds:g} s"
    return base.policy + (f" {args.churn}" if args.churn else "")


def run(args: argparse.Namespace) -> list[tuple[str, SimResult]]:
    """The simulations the flags describe, each named for the table."""
    for flag, path, suffix in (("--plot", args.plot, ".png"), ("--html", args.html, ".html")):
        if path is not None and path.suffix.lower() != suffix:
            raise ConfigError(f"{flag} {path}: write a {suffix} path")
    if args.plot is not None or args.html is not None:
        from pervade.sim import plot

        plot.require()  # before the simulations: a missing matplotlib fails fast
    base = scenario(args)
    rows = []
    for policy in policies(args):
        one = dataclasses.replace(base, policy=policy)
        rows.append((_name(args, one), simulate(one)))
    return rows


def main(args: argparse.Namespace) -> None:
    rows = run(args)
    print(table(rows))
    if args.plot is None and args.html is None:
        return
    from pervade.sim import plot

    jobs = scenario(args).jobs
    title = f"{sum(j.items for j in jobs)} items, {args.gpus}" + (
        f", {args.churn}" if args.churn else ""
    )
    if args.plot is not None:
        plot.write_png(rows, args.plot, title)
        print(f"plots: {args.plot}")
    if args.html is not None:
        plot.write_html(rows, args.html, title)
        print(f"page: {args.html}")
