"""The SQLite journal and the result files rebuilt from it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pervade.journal import Accepted, Journal, JournalMismatch, Outcome
from pervade.runtime.output import ResultSink, errors_path_for

R, E = Outcome.RESULT, Outcome.ERROR


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "run.journal"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j = Journal(path, "fp-1")
    yield j
    j.close()


def result(item: str, **body: Any) -> tuple[str, Outcome, dict[str, Any]]:
    return item, R, {"id": item, **body}


def error(item: str, **body: Any) -> tuple[str, Outcome, dict[str, Any]]:
    return item, E, {"id": item, **body}


def attempts(path: Path) -> list[tuple[str, str, str, str | None]]:
    """Attempt rows as another reader sees them (committed data only)."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT item_id, task, worker, outcome FROM attempts ORDER BY rowid"
        ).fetchall()
    return [tuple(row) for row in rows]


# -- the file ----------------------------------------------------------------------------


def test_wal_mode_is_on(journal: Journal, path: Path) -> None:
    assert path.is_file()  # the parent folder was created
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_with_same_fingerprint_keeps_outcomes(journal: Journal, path: Path) -> None:
    journal.accept([result("a", v=1)])
    journal.close()
    again = Journal(path, "fp-1")
    try:
        assert again.finished_ids() == {"a"}
        assert again.get_meta("fingerprint") == "fp-1"
    finally:
        again.close()


def test_other_fingerprint_raises_journal_mismatch(journal: Journal, path: Path) -> None:
    journal.accept([result("a", v=1)])
    with pytest.raises(JournalMismatch, match=r"belongs to another job") as info:
        Journal(path, "fp-2")
    assert str(path) in str(info.value)
    # The refused open changed nothing: the right job still finds its journal intact.
    assert journal.get_meta("fingerprint") == "fp-1"
    assert journal.finished_ids() == {"a"}


def test_meta_round_trip(journal: Journal) -> None:
    assert journal.get_meta("nothing") is None
    journal.set_meta("k", "1")
    journal.set_meta("k", "2")
    assert journal.get_meta("k") == "2"
    assert journal.get_meta("created") is not None


# -- outcomes ----------------------------------------------------------------------------


def test_accept_is_exactly_once(journal: Journal) -> None:
    first = journal.accept([result("a", v=1)])
    assert first == [Accepted("a", R, {"id": "a", "v": 1})]
    # A late duplicate, even with another body or kind, is dropped and changes nothing.
    assert journal.accept([result("a", v=2)]) == []
    assert journal.accept([error("a", error="late failure")]) == []
    assert list(journal.outcomes(R)) == [{"id": "a", "v": 1}]
    assert list(journal.outcomes(E)) == []
    assert journal.count(R) == 1
    assert journal.count(E) == 0


def test_accept_drops_duplicates_within_one_call(journal: Journal) -> None:
    accepted = journal.accept([result("a", v=1), result("b", v=1), result("a", v=9)])
    assert [a.item_id for a in accepted] == ["a", "b"]
    assert list(journal.outcomes(R)) == [{"id": "a", "v": 1}, {"id": "b", "v": 1}]


def test_accept_keeps_unicode_bodies(journal: Journal) -> None:
    journal.accept([result("ü", text="naïve — ✓")])
    assert list(journal.outcomes(R)) == [{"id": "ü", "text": "naïve — ✓"}]


def test_outcomes_come_in_acceptance_order_per_kind(journal: Journal) -> None:
    journal.accept([result("c"), error("z", error="x"), result("a")])
    journal.accept([result("b"), error("y", error="x")])
    assert [o["id"] for o in journal.outcomes(R)] == ["c", "a", "b"]
    assert [o["id"] for o in journal.outcomes(E)] == ["z", "y"]


def test_finished_ids_hold_results_and_errors(journal: Journal) -> None:
    assert journal.finished_ids() == set()
    journal.accept([result("a"), error("b", error="x")])
    assert journal.finished_ids() == {"a", "b"}


def test_forget_input_problems_removes_only_input_errors(journal: Journal) -> None:
    journal.accept(
        [
            error("@line:3", error="not valid JSON", stage="input"),
            error("x", error="missing claim", stage="input"),
            error("y", error="raised", stage="task"),
            error("z", error="too long", stage="item"),
            error("w", error="no stage"),
            result("r", stage="input"),  # a result is never an input problem
        ]
    )
    assert journal.forget_input_problems() == 2
    assert journal.finished_ids() == {"y", "z", "w", "r"}
    assert journal.forget_input_problems() == 0
    # The forgotten item can be recorded afresh on the rerun.
    assert [a.item_id for a in journal.accept([result("x")])] == ["x"]


# -- items and attempts ------------------------------------------------------------------


def test_attempts_start_and_end(journal: Journal, path: Path) -> None:
    journal.start_attempts("t1", "w1", ["a", "b", "c"])
    journal.start_attempts("t2", "w2", ["d"])
    assert journal.attempt_count() == 4
    assert attempts(path) == [
        ("a", "t1", "w1", None),
        ("b", "t1", "w1", None),
        ("c", "t1", "w1", None),
        ("d", "t2", "w2", None),
    ]
    journal.end_attempts("t1", "evicted", ["a"])
    journal.end_attempts("t1", "failed")  # the rest of t1; an ended attempt stays as it was
    assert [row[3] for row in attempts(path)] == ["evicted", "failed", "failed", None]
    # A second attempt of "a" in a new task: accepting with task= closes that task's attempts.
    journal.start_attempts("t3", "w2", ["a"])
    journal.accept([result("a")], task="t3")
    journal.accept([result("d")], task="t2")
    assert [row[3] for row in attempts(path)] == ["evicted", "failed", "failed", "done", "done"]
    assert journal.attempt_count() == 5


def test_attempt_end_times_are_recorded(journal: Journal, path: Path) -> None:
    journal.start_attempts("t1", "w1", ["a", "b"])
    journal.end_attempts("t1", "evicted", ["a"])
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT item_id, started, ended FROM attempts ORDER BY item_id"
        ).fetchall()
    (a, a_started, a_ended), (b, _b_started, b_ended) = rows
    assert (a, b) == ("a", "b")
    assert a_ended is not None and a_ended >= a_started
    assert b_ended is None


def test_register_items_upserts_lines(journal: Journal, path: Path) -> None:
    journal.register_items([("a", 1), ("b", 2)])
    journal.register_items([("a", 5)])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id, line FROM items ORDER BY id").fetchall() == [
            ("a", 5),
            ("b", 2),
        ]


def test_record_context_load(journal: Journal, path: Path) -> None:
    journal.record_context_load("w1", "ctx", 2.5)
    journal.record_context_load("w2", "ctx", 1.5, "origin", 4096)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT worker, context, seconds, tier, bytes FROM context_loads")
        assert rows.fetchall() == [("w1", "ctx", 2.5, None, 0), ("w2", "ctx", 1.5, "origin", 4096)]
    assert journal.context_loads() == [
        ("w1", "ctx", 2.5, None, 0),
        ("w2", "ctx", 1.5, "origin", 4096),
    ]


def test_a_journal_from_before_load_tiers_and_began_gets_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.journal"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('fingerprint', 'fp-old')")
        db.execute(
            "CREATE TABLE context_loads (worker TEXT NOT NULL, context TEXT NOT NULL, "
            "seconds REAL NOT NULL, at REAL NOT NULL)"
        )
        db.execute("INSERT INTO context_loads VALUES ('w1', 'ctx', 3.0, 1.0)")
        db.execute(
            "CREATE TABLE attempts (item_id TEXT NOT NULL, task TEXT NOT NULL, "
            "worker TEXT NOT NULL, started REAL NOT NULL, ended REAL, outcome TEXT)"
        )
        db.execute("INSERT INTO attempts VALUES ('x', 't0', 'w1', 1.0, NULL, NULL)")
    journal = Journal(path, "fp-old")
    try:
        journal.begin_attempts("t0")  # the attempts table got its `began` column
        journal.end_attempts("t0", "evicted")
        assert journal.rerun_items() == 1
        journal.record_context_load("w2", "ctx", 0.5, "disk", 0)
        assert journal.context_loads() == [
            ("w1", "ctx", 3.0, None, 0),
            ("w2", "ctx", 0.5, "disk", 0),
        ]
    finally:
        journal.close()
    Journal(path, "fp-old").close()  # opening again migrates nothing twice


# -- result files ------------------------------------------------------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_rerun_items_counts_work_lost_not_items_handed_back(journal: Journal) -> None:
    journal.start_attempts("t1", "w1", ["a", "b", "c", "d"])
    journal.end_attempts("t1", "evicted", ["a"])
    journal.end_attempts("t1", "task raised: boom", ["b"])
    journal.end_attempts("t1", "drained", ["c"])
    journal.accept([result("d")], "t1")
    journal.start_attempts("t2", "w2", ["a"])
    journal.end_attempts("t2", "restarted")
    assert journal.rerun_items() == 2  # a (twice) and b; c never ran, d is done
    assert journal.rerun_items(since=float("inf")) == 0


def test_worker_events_and_run_summaries_survive_a_reopen(journal: Journal, path: Path) -> None:
    journal.record_worker_event("tcp://w1", "joined")
    journal.record_worker_event("tcp://w1", "drained")
    journal.start_run("r1")
    journal.end_run("r1", {"graceful_evictions": 1, "goodput": 0.8})
    journal.start_run("r2")  # a run that never ended (the driver was killed) has no summary
    journal.close()
    again = Journal(path, "fp-1")
    try:
        assert again.worker_events() == [("tcp://w1", "joined"), ("tcp://w1", "drained")]
        assert again.run_summaries() == [{"graceful_evictions": 1, "goodput": 0.8}]
    finally:
        again.close()


def test_errors_path_for() -> None:
    assert errors_path_for(Path("/o/out.jsonl")) == Path("/o/out.errors.jsonl")
    assert errors_path_for(Path("/o/out")) == Path("/o/out.errors.jsonl")
    assert errors_path_for(Path("/o/out.json")) == Path("/o/out.json.errors.jsonl")


def test_sink_creates_empty_files_for_a_new_journal(journal: Journal, tmp_path: Path) -> None:
    results, errors = tmp_path / "out" / "r.jsonl", tmp_path / "out" / "r.errors.jsonl"
    sink = ResultSink(results, errors, journal)
    sink.close()
    assert results.read_text() == "" and errors.read_text() == ""


def test_sink_rebuilds_files_from_the_journal(journal: Journal, tmp_path: Path) -> None:
    journal.accept([result("a", v=1), error("b", error="x"), result("c", v=3)])
    out = tmp_path / "out"
    out.mkdir()
    results, errors = out / "r.jsonl", out / "r.errors.jsonl"
    # A crashed run left a torn last line in one file and junk plus a line the journal
    # never accepted in the other.
    results.write_text('{"id": "a", "v": 1}\n{"id": "c", "v"', encoding="utf-8")
    errors.write_text('garbage\n{"id": "q", "error": "never accepted"}\n', encoding="utf-8")
    sink = ResultSink(results, errors, journal)
    sink.close()
    assert lines(results) == [{"id": "a", "v": 1}, {"id": "c", "v": 3}]
    assert lines(errors) == [{"id": "b", "error": "x"}]
    assert sorted(p.name for p in out.iterdir()) == ["r.errors.jsonl", "r.jsonl"]  # no scratch


def test_sink_write_appends_after_the_rebuilt_lines(journal: Journal, tmp_path: Path) -> None:
    journal.accept([result("a", v=1)])
    results, errors = tmp_path / "r.jsonl", tmp_path / "r.errors.jsonl"
    sink = ResultSink(results, errors, journal)
    try:
        sink.write(journal.accept([result("b", v=2), error("c", error="bad")]))
        # Flushed on write: a reader sees the lines before the sink is closed.
        assert lines(results) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}]
        assert lines(errors) == [{"id": "c", "error": "bad"}]
        # A duplicate is not accepted, so nothing is written twice.
        sink.write(journal.accept([result("b", v=99)]))
        assert lines(results) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}]
    finally:
        sink.close()
    # Reopened, the files are rebuilt to exactly what was written.
    again = ResultSink(results, errors, journal)
    again.close()
    assert lines(results) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}]
    assert lines(errors) == [{"id": "c", "error": "bad"}]


def test_work_lost_in_a_task_its_worker_had_not_begun_is_not_counted_as_redone(
    journal: Journal, path: Path
) -> None:
    journal.start_attempts("t1", "w1", ["a", "b"])
    journal.start_attempts("t2", "w1", ["c", "d"])  # queued behind t1 on the same worker
    journal.begin_attempts("t1")
    journal.end_attempts("t1", "evicted")
    journal.end_attempts("t2", "unstarted")
    assert journal.rerun_items() == 2  # a and b; c and d never ran
    with sqlite3.connect(path) as db:
        began = dict(db.execute("SELECT task, MAX(began) FROM attempts GROUP BY task"))
    assert began["t1"] is not None and began["t2"] is None
