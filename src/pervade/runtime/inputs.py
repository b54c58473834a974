"""Reading JSONL input: one item per line, problems reported with file, line and field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """Raised by a record parser: this record cannot become an item."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SourceItem:
    id: str
    line: int
    data: Mapping[str, Any]
    cost: int


@dataclass(frozen=True, slots=True)
class InputProblem:
    path: str
    line: int
    id: str | None
    field: str | None
    message: str

    @property
    def key(self) -> str:
        """The journal key of this problem: the item id if it has a usable one."""
        return self.id if self.id is not None else f"@line:{self.line}"

    def describe(self) -> str:
        where = f"{self.path}:{self.line}"
        if self.field:
            where += f": field {self.field!r}"
        return f"{where}: {self.message}"

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "error": self.describe(),
            "stage": "input",
            "file": self.path,
            "line": self.line,
            "field": self.field,
        }


# A parser turns one JSON object (already known to have an id) into the item's data and a
# relative cost, or raises RecordError.
Parser = Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], int]]


def count_records(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def read_jsonl(path: Path, parse: Parser) -> Iterator[SourceItem | InputProblem]:
    first_line: dict[str, int] = {}
    name = str(path)
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                # Without its line break, which would put a cut line's error on the next line.
                record = json.loads(raw.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield InputProblem(
                    name, number, None, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
                )
                continue
            if not isinstance(record, dict):
                kind = type(record).__name__
                yield InputProblem(name, number, None, None, f"expected a JSON object, got {kind}")
                continue
            raw_id = record.get("id")
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
                message = (
                    "missing"
                    if raw_id is None
                    else f"must be a non-empty string or integer, got {raw_id!r}"
                )
                yield InputProblem(name, number, None, "id", message)
                continue
            item_id = str(raw_id)
            if item_id in first_line:
                yield InputProblem(
                    name,
                    number,
                    None,
                    "id",
                    f"duplicate id {item_id!r} (first on line {first_line[item_id]}); skipped",
                )
                continue
            first_line[item_id] = number
            try:
                data, cost = parse(record)
            except RecordError as exc:
                yield InputProblem(name, number, item_id, exc.field, exc.message)
                continue
            yield SourceItem(item_id, number, data, cost)


@dataclass(slots=True)
class Portion:
    """The next items of a source to submit, and the input problems read on the way."""

    items: list[SourceItem]
    problems: list[InputProblem]
    exhausted: bool  # the source has nothing after these


def next_portion(source: Iterator[SourceItem | InputProblem], skip: set[str], size: int) -> Portion:
    """Read up to `size` entries of `source`, leaving out items whose ids are in `skip`
    (finished in an earlier run)."""
    portion = Portion([], [], exhausted=True)
    for entry in source:
        if isinstance(entry, InputProblem):
            portion.problems.append(entry)
        elif entry.id not in skip:
            portion.items.append(entry)
        if len(portion.items) + len(portion.problems) >= size:
            portion.exhausted = False
            break
    return portion
