"""Result and error files, written as outcomes are accepted and rebuilt from the journal.

On start the files are rebuilt from the journal (written aside, then renamed), so a driver
killed between a journal commit and a file write, or in the middle of a line, leaves no
gap and no torn line once the same command runs again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pervade.journal import Accepted, Journal, Outcome


def errors_path_for(results: Path) -> Path:
    name = results.name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return results.with_name(f"{stem}.errors.jsonl")


class OutputConflict(RuntimeError):
    """An output file holds lines the journal does not know: rewriting it would lose them."""


def check_outputs(results: Path, errors: Path, journal: Journal) -> None:
    """Refuse to adopt a non-empty output file when the journal has no outcome of that kind."""
    for kind, path in ((Outcome.RESULT, results), (Outcome.ERROR, errors)):
        if path.is_file() and path.stat().st_size > 0 and journal.count(kind) == 0:
            raise OutputConflict(
                f"{path} already holds lines that the journal {journal.path} does not know; "
                "pass another output (or the journal that wrote it), or delete the file"
            )


class ResultSink:
    def __init__(self, results: Path, errors: Path, journal: Journal) -> None:
        check_outputs(results, errors, journal)
        self.results_path = results
        self.errors_path = errors
        self._files: dict[Outcome, IO[str]] = {}
        for kind, path in ((Outcome.RESULT, results), (Outcome.ERROR, errors)):
            path.parent.mkdir(parents=True, exist_ok=True)
            _rebuild(path, journal.outcomes(kind))
            self._files[kind] = path.open("a", encoding="utf-8")

    def write(self, accepted: Iterable[Accepted]) -> None:
        touched: set[Outcome] = set()
        for outcome in accepted:
            self._files[outcome.kind].write(_line(outcome.body))
            touched.add(outcome.kind)
        for kind in touched:
            self._files[kind].flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def _line(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False) + "\n"


def _rebuild(path: Path, bodies: Iterable[dict[str, Any]]) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with scratch.open("w", encoding="utf-8") as handle:
        for body in bodies:
            handle.write(_line(body))
        handle.flush()
        os.fsync(handle.fileno())
    scratch.replace(path)
