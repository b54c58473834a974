"""Outcomes of items: turned into records, accepted once through the journal, written out."""

from __future__ import annotations

import json
from typing import Any

from pervade.core import ItemError
from pervade.journal import Accepted, Journal, Outcome
from pervade.runtime.inputs import SourceItem
from pervade.runtime.output import ResultSink
from pervade.runtime.stats import RunStats

Record = tuple[str, Outcome, dict[str, Any]]


class Outcomes:
    """The items read but without an outcome yet (`window`), and the accepting of outcomes."""

    def __init__(
        self, journal: Journal, sink: ResultSink, stats: RunStats, function_name: str
    ) -> None:
        self.journal = journal
        self.sink = sink
        self.stats = stats
        self.function_name = function_name
        self.window: dict[str, SourceItem] = {}
        self.accepted: list[Accepted] = []  # since the caller last took them

    def record(self, item_id: str, value: Any) -> Record:
        """What a batch function returned for an item, as a result or an error record."""
        if isinstance(value, ItemError):
            record: dict[str, Any] = {"id": item_id, "error": value.message, "stage": "item"}
            if value.field:
                record["field"] = value.field
            entry = self.window.get(item_id)
            if entry is not None:
                record["line"] = entry.line
            return item_id, Outcome.ERROR, record
        body = dict(value) if isinstance(value, dict) else {"value": value}
        body = {"id": item_id, **{k: v for k, v in body.items() if k != "id"}}
        try:
            json.dumps(body)
        except (TypeError, ValueError) as exc:
            message = f"{self.function_name} returned a value that is not JSON: {exc}"
            return item_id, Outcome.ERROR, {"id": item_id, "error": message, "stage": "item"}
        return item_id, Outcome.RESULT, body

    def accept(self, records: list[Record], task: str | None = None) -> int:
        """Accept what has no outcome yet; the number accepted (late duplicates are not)."""
        accepted = self.journal.accept(records, task)
        self.sink.write(accepted)
        for outcome in accepted:
            if outcome.kind is Outcome.RESULT:
                self.stats.results += 1
            else:
                self.stats.errors += 1
            self.window.pop(outcome.item_id, None)
        self.accepted.extend(accepted)
        return len(accepted)

    def take(self) -> list[Accepted]:
        taken, self.accepted = self.accepted, []
        return taken
