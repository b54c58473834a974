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
        self,
        journal: Journal,
        sink: ResultSink,
        stats: RunStats,
        function_name: str,
        input_name: str | None = None,
    ) -> None:
        """`input_name`: the file the items come from, named in their error records."""
        self.journal = journal
        self.input_name = input_name
        self.sink = sink
        self.stats = stats
        self.function_name = function_name
        self.window: dict[str, SourceItem] = {}
        self.accepted: list[Accepted] = []  # since the caller last took them

    def record(self, item_id: str, value: Any) -> Record:
        """What a batch function returned for an item, as a result or an error record."""
        if isinstance(value, ItemError):
            return self.error(item_id, value.message, "item", value.field)
        body = dict(value) if isinstance(value, dict) else {"value": value}
        body = {"id": item_id, **{k: v for k, v in body.items() if k != "id"}}
        try:
            json.dumps(body)
        except (TypeError, ValueError) as exc:
            message = f"{self.function_name} returned a value that is not JSON: {exc}"
            return self.error(item_id, message, "item")
        return item_id, Outcome.RESULT, body

    def error(self, item_id: str, message: str, stage: str, field: str | None = None) -> Record:
        """An error record for an item, naming the input file and line it came from."""
        record: dict[str, Any] = {"id": item_id, "error": message, "stage": stage}
        if self.input_name is not None:
            record["file"] = self.input_name
        entry = self.window.get(item_id)
        if entry is not None:
            record["line"] = entry.line
        if field:
            record["field"] = field
        return item_id, Outcome.ERROR, record

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
