"""Readers of the availability trace formats (see data/README.md for where each comes from).

Each reader returns an `Availability` in trace seconds, or raises `TraceError` naming the
file, line and field of the first thing it cannot use.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

from pervade.core.availability import Availability, from_counts, from_events
from pervade.core.config import ConfigError

MINUTE = 60.0


class TraceError(ConfigError):
    """A trace file that cannot be read; the message names the file, line and field."""

    def __init__(self, path: Path, line: int, field: str, message: str) -> None:
        super().__init__(f"{path}:{line}: {field}: {message}")
        self.path, self.line, self.field = path, line, field


def read_trace(path: Path) -> Availability:
    """Any of the known formats, told apart by the first line."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise TraceError(path, 1, "-", "the trace is empty")
    header = first[1].strip()
    cells = [cell.strip() for cell in header.split(",")]
    reader: Callable[[Path], Availability]
    if cells == ["time", "active", "total"]:
        reader = read_philly
    elif cells[:1] == ["time"] and "idle_gpu_num" in cells:
        reader = read_helios
    elif len(cells) == 3 and cells[1] in ("add", "remove"):
        reader = read_spot_events
    elif len(cells) == 3 and _is_date(cells[0]):
        reader = read_spot_counts
    else:
        raise TraceError(
            path,
            1,
            "-",
            "not a known trace format (AWS spot 'time_ms,event,node_id', GCP 'date, time, N', "
            "Helios cluster_sequence_vc.csv, Philly 'time,active,total')",
        )
    return reader(path)


def read_spot_events(path: Path) -> Availability:
    """Bamboo's AWS spot files: ``time_ms,event,node_id`` per line, no header; `add` makes an
    instance available, `remove` takes it away; an id is one instance lifetime."""
    events: list[tuple[float, int]] = []
    up: set[str] = set()
    seen: set[str] = set()
    last = 0
    for number, line in _lines(path):
        cells = _cells(path, number, line, ("time_ms", "event", "node_id"))
        at = _count(path, number, "time_ms", cells[0])
        if at < last:
            raise TraceError(path, number, "time_ms", f"{at} is earlier than the line before")
        last = at
        event, node = cells[1], cells[2]
        if event == "add":
            if node in seen:
                raise TraceError(path, number, "node_id", f"{node!r} was added before")
            seen.add(node)
            up.add(node)
        elif event == "remove":
            if node not in up:
                raise TraceError(path, number, "node_id", f"{node!r} is removed but not up")
            up.discard(node)
        else:
            raise TraceError(path, number, "event", f"{event!r} is not add or remove")
        events.append((at / 1000.0, 1 if event == "add" else -1))
    if not events:
        raise TraceError(path, 1, "-", "the trace has no events")
    return from_events(events)


def read_spot_counts(path: Path) -> Availability:
    """Bamboo's GCP files: ``YYYY-MM-DD, HH:MM:SS, N`` (running instances), no header.
    Observations are echoed at +60 s and +120 s; as the trace's README says, a line is kept
    only if its N differs from the line before or it is not exactly 60 s after it."""
    samples: list[tuple[float, int]] = []
    start: datetime | None = None
    previous: tuple[float, int] | None = None
    for number, line in _lines(path):
        day, clock, count_text = _cells(path, number, line, ("date", "time", "count"))
        when = _timestamp(path, number, "time", f"{day} {clock}")
        start = start or when
        at = (when - start).total_seconds()
        count = _count(path, number, "count", count_text)
        echo = previous is not None and count == previous[1] and at - previous[0] == MINUTE
        previous = (at, count)
        if echo:
            continue
        if samples and at <= samples[-1][0]:
            raise TraceError(path, number, "time", "not later than the observation before")
        samples.append((at, count))
    if not samples:
        raise TraceError(path, 1, "-", "the trace has no observations")
    return from_counts(samples)


def read_helios(path: Path) -> Availability:
    """A Helios artifact ``cluster_sequence_vc.csv``: one row a minute; `idle_gpu_num` GPUs
    are free for a backfill worker during that minute."""
    return _per_minute(path, ("time", "idle_gpu_num"), lambda row: row[0])


def read_philly(path: Path) -> Availability:
    """The Helios artifact's ``philly_node_sequence.csv``: ``time,active,total`` a minute;
    ``total - active`` nodes are idle (one slot per node: the GPUs per node vary)."""

    def idle(row: list[int]) -> int:
        return row[1] - row[0]

    return _per_minute(path, ("time", "active", "total"), idle)


def _per_minute(
    path: Path, columns: tuple[str, ...], usable: Callable[[list[int]], int]
) -> Availability:
    lines = _lines(path)
    header = next(lines, (1, ""))[1].strip().split(",")
    missing = [name for name in columns if name not in header]
    if missing:
        raise TraceError(path, 1, missing[0], "column missing from the header")
    where = [header.index(name) for name in columns]
    samples: list[tuple[float, int]] = []
    start: datetime | None = None
    for number, line in lines:
        cells = line.strip().split(",")
        if len(cells) != len(header):
            raise TraceError(
                path, number, "-", f"{len(cells)} fields where the header has {len(header)}"
            )
        when = _timestamp(path, number, "time", cells[where[0]])
        start = start or when
        at = (when - start).total_seconds()
        if samples and at <= samples[-1][0]:
            raise TraceError(path, number, "time", "not later than the row before")
        values = [
            _count(path, number, name, cells[i])
            for name, i in zip(columns[1:], where[1:], strict=True)
        ]
        slots = usable(values)
        if slots < 0:
            raise TraceError(path, number, columns[-1], f"fewer than the {columns[1]} column")
        samples.append((at, slots))
    if not samples:
        raise TraceError(path, 2, "-", "the trace has no rows")
    return from_counts(samples, hold=MINUTE)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines; .gz files are read through gzip."""
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, 0, "-", f"cannot read: {exc}") from None


def _open(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _cells(path: Path, number: int, line: str, names: tuple[str, ...]) -> list[str]:
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) != len(names):
        raise TraceError(
            path, number, "-", f"{len(cells)} fields, expected {len(names)}: {','.join(names)}"
        )
    return cells


def _count(path: Path, number: int, field: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(path, number, field, f"{text!r} is not a whole number") from None
    if value < 0:
        raise TraceError(path, number, field, f"{value} is negative")
    return value


def _timestamp(path: Path, number: int, field: str, text: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise TraceError(
            path, number, field, f"{text!r} is not a time like 2020-05-01 00:00:00"
        ) from None


def _is_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True
