"""The closing summary of a run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from pervade.reports.progress import format_duration
from pervade.runtime.stats import RunStats


def summary_rows(
    stats: RunStats,
    wall_seconds: float,
    accuracy: tuple[int, int] | None,
    paths: dict[str, Path],
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    total = stats.total if stats.total is not None else stats.done
    rows.append(("items", f"{stats.done} of {total} have an outcome"))
    rows.append(
        (
            "this run",
            f"{stats.results} results, {stats.errors} errors"
            + (f", {stats.resumed} done by earlier runs" if stats.resumed else ""),
        )
    )
    if accuracy is not None:
        correct, labelled = accuracy
        share = f"{100 * correct / labelled:.1f}%" if labelled else "n/a"
        rows.append(("accuracy", f"{share} ({correct} of {labelled} labelled items)"))
    rows.append(("wall time", format_duration(wall_seconds)))
    busy = stats.load_seconds + stats.infer_seconds
    if busy > 0:
        rows.append(
            (
                "worker time",
                f"{stats.load_seconds:.1f} s loading contexts ({_loads(stats)}), "
                f"{stats.infer_seconds:.1f} s inferring ({100 * stats.infer_seconds / busy:.0f}%)",
            )
        )
    if stats.gpu_classes:
        kinds = ", ".join(f"{n} x {name}" for name, n in sorted(stats.gpu_classes.items()))
        rows.append(("GPUs", f"workers by device: {kinds}"))
    if stats.prefetches or stats.staged:
        rows.append(
            (
                "prefetch",
                f"{stats.prefetches} contexts staged ahead of their build; "
                f"{stats.staged} times a context's files were on a node with nothing live",
            )
        )
    if stats.items_per_second or stats.results:
        rate = stats.results / wall_seconds if wall_seconds > 0 else 0.0
        rows.append(("throughput", f"{rate:.1f} items/s over the run"))
    if stats.hard_evictions or stats.graceful_evictions:
        rows.append(
            (
                "evictions",
                f"{stats.hard_evictions} without notice ({stats.requeued_evicted} item attempts "
                f"lost and run again), {stats.graceful_evictions} graceful "
                f"({stats.requeued_graceful} unstarted items handed back)",
            )
        )
    if stats.copies:
        rows.append(
            (
                "tail copies",
                f"{stats.copies} speculative cop{'y' if stats.copies == 1 else 'ies'} of "
                f"slow tasks, {stats.copies_won} finished first",
            )
        )
    if stats.advice:
        rows.append(("scaling advice", stats.advice))
    if stats.restarts:
        rows.append(("restarts", f"{stats.restarts} worker processes replaced (device error)"))
    if stats.oom_splits:
        rows.append(("out of memory", f"{stats.oom_splits} batches split in smaller pieces"))
    if stats.requeued:
        rows.append(
            (
                "requeued",
                f"{stats.requeued} item attempts ran again; "
                f"{stats.rerun_items} items had work lost and redone",
            )
        )
    goodput = stats.goodput
    if goodput.worker_seconds > 0:

        def part(seconds: float) -> str:
            return f"{100 * seconds / goodput.worker_seconds:.0f}%"

        rows.append(
            (
                "goodput",
                f"{part(goodput.useful)} of {goodput.worker_seconds:.0f} worker-seconds on "
                f"accepted results; {part(goodput.loading)} loading contexts, "
                f"{part(goodput.lost)} lost to re-execution, {part(goodput.idle)} idle",
            )
        )
    for name, path in paths.items():
        rows.append((name, str(path.resolve())))
    return rows


def _loads(stats: RunStats) -> str:
    """ "3 loads" and, when known, where their artifacts came from: "3 loads: 1 origin, 2 disk"."""
    text = f"{stats.context_loads} loads"
    tiers = {tier: n for tier, n in stats.load_tiers.items() if tier != "unknown"}
    if tiers:
        text += ": " + ", ".join(f"{n} {tier}" for tier, n in sorted(tiers.items()))
    return text


def print_summary(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
