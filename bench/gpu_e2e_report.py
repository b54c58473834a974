"""The e2e section's results (bench/gpu_e2e.py): one way's measurements, and the table
and findings printed from them (against the static ideal, naive and the published reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

REFERENCE_REDUCTIONS = (72.1, 98.1)  # naive -> pervasive context management, as published


@dataclass
class Way:
    name: str
    workers: int
    items: int
    wall: float
    tokens: int
    notes: list[str] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    stats: Any = None
    task_seconds: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.wall


def report(
    bench: Any,
    ways: list[Way],
    count: int,
    size: int,
    shape: str,
    batch: int,
    naive_full: dict[str, float],
) -> None:
    if not ways:
        return
    ideal = next((w for w in ways if w.name.startswith("static")), None)
    bench.say(
        f"### e2e: fact verification, {count} synthetic claims (bench/gen_claims.py), Llama"
        f" {shape} shape ({size / 1e9:.2f} GB, random weights), word-level tokens,"
        f" engine batches of {batch}\n"
    )
    head = ["way", "workers", "items", "wall s", "items/s", "prompt tokens/s", "items/s / static"]
    rows = []
    for way in ways:
        cells = [way.name, str(way.workers), str(way.items), f"{way.wall:.1f}"]
        cells += [f"{way.rate:,.1f}", f"{way.tokens / way.wall:,.0f}"]
        cells += [f"{way.rate / ideal.rate:.2f}" if ideal else "-"]
        rows.append([*cells, "; ".join(way.notes)])
    bench.table([*head, "notes"], rows)
    lines = []
    by_name = {w.name: w for w in ways}
    one = next((w for w in ways if w.name.startswith("pervade,") and w.workers == 1), None)
    if one is not None and ideal is not None:
        ratio = one.rate / ideal.rate
        verdict = "met" if ratio >= 0.9 else "not met"
        lines.append(f"- pervade / static ideal items/s: {ratio:.2f} (target >= 0.9: {verdict})")
        same = sum(one.verdicts.get(k) == v for k, v in ideal.verdicts.items())
        same /= max(1, len(ideal.verdicts))
        lines.append(
            f"- verdicts of pervade equal to the static ideal's: {same:.1%}"
            " (bf16 random weights: near-ties flip with batch composition)"
        )
    if one is not None:
        ref = " and ".join(f"{r}%" for r in REFERENCE_REDUCTIONS)
        for name, full in naive_full.items() if one.items == count else ():
            lines.append(
                f"- {name} / pervade wall time: {full:.1f} s / {one.wall:.1f} s ="
                f" {full / one.wall:.2f}x, a {100 * (1 - one.wall / full):.1f}% reduction (the"
                f" reference published {ref}); naive's full run extrapolated from"
                f" {by_name[name].items} items timed"
            )
    two = next((w for w in ways if w.name.startswith("pervade,") and w.workers == 2), None)
    if one is not None and two is not None:
        lines.append(f"- scaling, 2 workers (one GPU each): {two.rate / (2 * one.rate):.0%}")
    churned = next((w for w in ways if "churn" in w.name), None)
    if churned is not None and churned.stats is not None:
        share = churned.stats.goodput.share
        verdict = "met" if share >= 0.8 else "not met"
        # Compare with the run without churn on the same number of workers.
        calm = next(
            (w for w in ways if w.name.startswith("pervade,") and w.workers == churned.workers),
            None,
        )
        lines.append(
            f"- goodput under churn `{bench.args.churn}`: {share:.0%} (target >= 80% at mtbe"
            f" 300 s: {verdict}); wall {churned.wall / calm.wall if calm else math.nan:.2f}x"
            " the run without churn"
        )
    for line in lines:
        bench.say(line)
    bench.say()
