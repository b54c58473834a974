"""SQLite journal. The run's only source of truth: output files are rebuilt from it.

Every outcome is accepted at most once (the primary key on `outcomes.item_id`), so a late
duplicate from a speculative or requeued attempt is dropped, and a rerun of the same
command skips every item that already has an outcome.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    line INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    item_id TEXT NOT NULL,
    task TEXT NOT NULL,
    worker TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT,
    began REAL  -- when its worker began the task (NULL: never, or not known)
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (task);
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('result', 'error')),
    body TEXT NOT NULL,
    task TEXT,
    accepted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_events (
    worker TEXT NOT NULL,
    event TEXT NOT NULL,  -- joined, evicted (without notice), drained (graceful), restarted
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    summary TEXT  -- JSON: evictions, items re-run, goodput of the run
);
CREATE TABLE IF NOT EXISTS context_loads (
    worker TEXT NOT NULL,
    context TEXT NOT NULL,
    seconds REAL NOT NULL,
    at REAL NOT NULL,
    tier TEXT,  -- where its artifacts came from: disk, origin (NULL: no artifacts, or unknown)
    bytes INTEGER NOT NULL DEFAULT 0  -- bytes copied to the worker for this load
);
"""

# Columns added after a table was first released: (table, column, declaration). A journal
# written by an older pervade gets them on open, so a rerun can resume it.
_ADDED_COLUMNS = (
    ("context_loads", "tier", "TEXT"),
    ("context_loads", "bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("attempts", "began", "REAL"),
)


class JournalMismatch(RuntimeError):
    """The journal file belongs to another job."""


class Outcome(Enum):
    RESULT = "result"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Accepted:
    item_id: str
    kind: Outcome
    body: dict[str, Any]


class Journal:
    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the driver owns the journal, but it may be opened on
        # one thread and used on another; every call still comes from one thread at a time.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        stored = self.get_meta("fingerprint")
        if stored is None:
            self.set_meta("fingerprint", fingerprint)
            self.set_meta("created", repr(time.time()))
        elif stored != fingerprint:
            self._db.close()
            raise JournalMismatch(
                f"{path}: this journal belongs to another job (a different input, model, "
                "template or function); pass another --journal, or delete it to start over"
            )

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    # -- metadata --------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- items and attempts ----------------------------------------------------------

    def finished_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT item_id FROM outcomes")}

    def register_items(self, rows: Iterable[tuple[str, int]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO items (id, line) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET line = excluded.line",
                rows,
            )

    def start_attempts(self, task: str, worker: str, item_ids: Iterable[str]) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO attempts (item_id, task, worker, started) VALUES (?, ?, ?, ?)",
                ((item_id, task, worker, now) for item_id in item_ids),
            )

    def begin_attempts(self, task: str) -> None:
        """The worker began running `task`: its attempts that end without an outcome lost
        work, unlike those of a task that was still waiting."""
        self._db.execute(
            "UPDATE attempts SET began = ? WHERE task = ? AND ended IS NULL", (time.time(), task)
        )

    def end_attempts(self, task: str, outcome: str, item_ids: Iterable[str] | None = None) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            if item_ids is None:
                self._db.execute(
                    "UPDATE attempts SET ended = ?, outcome = ? WHERE task = ? AND ended IS NULL",
                    (now, outcome, task),
                )
            else:
                self._db.executemany(
                    "UPDATE attempts SET ended = ?, outcome = ? "
                    "WHERE task = ? AND item_id = ? AND ended IS NULL",
                    ((now, outcome, task, item_id) for item_id in item_ids),
                )

    # -- outcomes --------------------------------------------------------------------

    def accept(
        self, outcomes: Iterable[tuple[str, Outcome, dict[str, Any]]], task: str | None = None
    ) -> list[Accepted]:
        """Record outcomes; return those that were new. Duplicates are dropped silently."""
        now = time.time()
        accepted: list[Accepted] = []
        reported: list[str] = []
        with self._db:
            self._db.execute("BEGIN")
            for item_id, kind, body in outcomes:
                reported.append(item_id)
                cursor = self._db.execute(
                    "INSERT INTO outcomes (item_id, kind, body, task, accepted) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_id) DO NOTHING",
                    (item_id, kind.value, json.dumps(body, ensure_ascii=False), task, now),
                )
                if cursor.rowcount == 1:
                    accepted.append(Accepted(item_id, kind, body))
            if task is not None:
                self._db.executemany(
                    "UPDATE attempts SET ended = ?, outcome = 'done' "
                    "WHERE task = ? AND item_id = ? AND ended IS NULL",
                    ((now, task, item_id) for item_id in reported),
                )
        return accepted

    def forget_input_problems(self) -> int:
        """Drop errors recorded for unreadable input lines: a rerun reads the input again,
        so a line fixed since then becomes an item and one still broken is recorded anew."""
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "DELETE FROM outcomes WHERE kind = 'error' "
                "AND json_extract(body, '$.stage') = 'input'"
            )
        return int(cursor.rowcount)

    def outcomes(self, kind: Outcome) -> Iterator[dict[str, Any]]:
        """Accepted outcomes of one kind in acceptance order, as written to the output."""
        cursor = self._db.execute(
            "SELECT body FROM outcomes WHERE kind = ? ORDER BY seq", (kind.value,)
        )
        for (body,) in cursor:
            yield json.loads(body)

    def count(self, kind: Outcome) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM outcomes WHERE kind = ?", (kind.value,))
        return int(row.fetchone()[0])

    def attempt_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def rerun_items(self, since: float = 0.0) -> int:
        """Items that ran and lost the work (their worker died, their batch raised), in
        attempts started at or after `since`; items handed back unstarted, or lost in a task
        their worker had not begun, do not count."""
        row = self._db.execute(
            "SELECT COUNT(DISTINCT item_id) FROM attempts WHERE started >= ? AND ended IS NOT "
            "NULL AND outcome NOT IN ('done', 'drained', 'stopped', 'unstarted')",
            (since,),
        )
        return int(row.fetchone()[0])

    # -- workers and runs ------------------------------------------------------------

    def record_worker_event(self, worker: str, event: str) -> None:
        self._db.execute(
            "INSERT INTO worker_events (worker, event, at) VALUES (?, ?, ?)",
            (worker, event, time.time()),
        )

    def worker_events(self) -> list[tuple[str, str]]:
        return [
            (str(w), str(e))
            for w, e in self._db.execute("SELECT worker, event FROM worker_events ORDER BY at")
        ]

    def start_run(self, run: str) -> float:
        now = time.time()
        self._db.execute("INSERT INTO runs (run, started) VALUES (?, ?)", (run, now))
        return now

    def end_run(self, run: str, summary: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE runs SET ended = ?, summary = ? WHERE run = ?",
            (time.time(), json.dumps(summary), run),
        )

    def run_summaries(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT summary FROM runs WHERE summary IS NOT NULL ORDER BY started"
        )
        return [json.loads(summary) for (summary,) in rows]

    # -- contexts --------------------------------------------------------------------

    def record_context_load(
        self,
        worker: str,
        context: str,
        seconds: float,
        tier: str | None = None,
        moved: int = 0,
    ) -> None:
        """One build of a context; `tier` says where its artifacts came from, `moved` how
        many bytes were copied for it."""
        self._db.execute(
            "INSERT INTO context_loads (worker, context, seconds, at, tier, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (worker, context, seconds, time.time(), tier, moved),
        )

    def context_loads(self) -> list[tuple[str, str, float, str | None, int]]:
        """(worker, context, seconds, tier, bytes) of every load, oldest first."""
        rows = self._db.execute(
            "SELECT worker, context, seconds, tier, bytes FROM context_loads ORDER BY at, rowid"
        )
        return [(str(w), str(c), float(s), t, int(b)) for w, c, s, t, b in rows]
