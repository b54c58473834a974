"""`pervade simulate`: a job on a simulated pool, under churn or a real trace; prints the
table. Bad input is a `ConfigError` naming the flag (the CLI prints it, exit 2)."""

from __future__ import annotations

import argparse
from typing import Any

from pervade.core.cache_policy import parse_size
from pervade.core.config import ConfigError
from pervade.sim.engine import simulate
from pervade.sim.model import GpuClass, Job, Loads, Pool, Scenario
from pervade.sim.result import SimResult, table
from pervade.traces import load_churn

CLASSES_USAGE = "NAME:COUNT[:SPEED[:MEMORY]],... e.g. a100:32:1.0:80GB,h100:16:2.5"


def add_parser(commands: Any) -> None:
    """Add the `simulate` subcommand to the CLI's subparsers."""
    sim = commands.add_parser("simulate", help="simulate a job on a pool of GPUs that churns")
    sim.add_argument("--items", type=int, default=100_000, help="items of the job")
    sim.add_argument("--work", type=float, default=0.5, help="seconds per item at speed 1")
    sim.add_argument("--model-size", default="16GB", help="the model's bytes (e.g. 16GB)")
    sim.add_argument("--gpus", default="g:64", help=f"GPU classes: {CLASSES_USAGE}")
    sim.add_argument("--churn", default=None, help="rate:mtbe=... or trace:NAME,... (see run)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--naive", action="store_true", help="every task loads its own model")
    sim.add_argument("--host-seconds", type=float, default=5.0, help="build from host memory")
    sim.add_argument("--peer-bandwidth", default="2GB", help="bytes/s of one peer copy")
    sim.add_argument("--origin-bandwidth", default="2GB", help="bytes/s of the origin, shared")
    sim.add_argument("--origin-streams", type=int, default=8, help="origin reads at a time")


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


def scenario(args: argparse.Namespace) -> Scenario:
    loads = Loads(
        host_seconds=args.host_seconds,
        peer_bandwidth=parse_size(args.peer_bandwidth, "--peer-bandwidth"),
        origin_bandwidth=parse_size(args.origin_bandwidth, "--origin-bandwidth"),
        origin_streams=args.origin_streams,
    )
    pool = Pool(parse_classes(args.gpus), loads)
    job = Job(args.items, args.work, parse_size(args.model_size, "--model-size"))
    churn = load_churn(args.churn, pool.size) if args.churn else None
    return Scenario(job, pool, churn, args.seed, reuse=not args.naive)


def run(args: argparse.Namespace) -> list[tuple[str, SimResult]]:
    """The simulation the flags describe, named for the table."""
    name = ("naive" if args.naive else "pervade") + (f" {args.churn}" if args.churn else "")
    return [(name[:22], simulate(scenario(args)))]


def main(args: argparse.Namespace) -> None:
    print(table(run(args)))
