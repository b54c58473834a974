"""Plots of simulated runs: active workers, throughput and backlog over time, one line per
run, as a PNG or a self-contained HTML page (the table, and the PNG inline).

matplotlib is imported only here and only when a plot is asked for (the `sim` extra), and
drawn on its Agg canvas without pyplot, so no display or global state is involved.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pervade.core.config import ConfigError
from pervade.sim.result import SimResult, table

Rows = Sequence[tuple[str, SimResult]]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install 'pervade[sim]' (or 'matplotlib>=3.7')"
        ) from None
    return Figure


def require() -> None:
    """Raise `ConfigError` now if matplotlib is missing."""
    _figure_class()


def png(rows: Rows, title: str = "") -> bytes:
    """The three panels of `rows` as PNG bytes."""
    figure = _figure_class()(figsize=(9.0, 8.0), layout="constrained")
    workers, throughput, backlog = figure.subplots(3, 1, sharex=True)
    # A run many times longer than the rest (naive, say) would squash them into the left
    # edge: the axis then ends a little after the second longest, and the legend gives every
    # run's makespan.
    spans = sorted(r.makespan for _, r in rows)
    shown = spans[-1] if len(spans) < 2 or spans[-1] <= 4 * spans[-2] else 1.15 * spans[-2]
    unit, scale = ("h", 3600.0) if shown > 7200.0 else ("min", 60.0)
    for name, result in rows:
        at = [s.at / scale for s in result.series]
        line = workers.step(at, [s.active_workers for s in result.series], where="post")[0]
        line.set_label(f"{name} ({result.makespan / scale:.1f} {unit})")
        if result.advice:
            workers.step(
                [a.at / scale for a in result.advice],
                [a.workers for a in result.advice],
                where="post",
                linestyle=":",
                color=line.get_color(),
                label=f"{name}: advised",
            )
        throughput.plot(at, [s.throughput for s in result.series], color=line.get_color())
        backlog.plot(at, [s.backlog for s in result.series], color=line.get_color())
    if shown < spans[-1]:
        backlog.set_xlim(0.0, shown / scale)
        backlog.annotate(
            "longer runs continue off the right edge",
            xy=(1.0, 1.0), xycoords="axes fraction", ha="right", va="bottom", fontsize="small",
        )  # fmt: skip
    workers.set_ylabel("active workers")
    throughput.set_ylabel("items / s")
    backlog.set_ylabel("items left")
    backlog.set_xlabel(f"simulated time ({unit})")
    for axes in (workers, throughput, backlog):
        axes.grid(alpha=0.3)
    workers.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, metadata={"Software": None})
    return out.getvalue()


def page(rows: Rows, title: str = "") -> str:
    """A self-contained HTML page: the table, then the plot inline."""
    image = base64.b64encode(png(rows, title)).decode("ascii")
    heading = html.escape(title or "pervade simulate")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{heading}</title></head>\n<body>\n<h1>{heading}</h1>\n"
        f"<pre>{html.escape(table(rows))}</pre>\n"
        f"<img alt='active workers, throughput and backlog over time' "
        f"src='data:image/png;base64,{image}'>\n</body></html>\n"
    )


def write_png(rows: Rows, path: Path, title: str = "") -> None:
    path.write_bytes(png(rows, title))


def write_html(rows: Rows, path: Path, title: str = "") -> None:
    path.write_text(page(rows, title), encoding="utf-8")
