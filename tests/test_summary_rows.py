"""The run summary's rows for tail copies and scaling advice."""

from __future__ import annotations

from pervade.reports.summary import summary_rows
from pervade.runtime.stats import RunStats


def rows(**fields: object) -> dict[str, str]:
    stats = RunStats()
    for name, value in fields.items():
        setattr(stats, name, value)
    return dict(summary_rows(stats, 10.0, None, {}))


def test_tail_copies_and_advice_are_shown_only_when_there_are_some() -> None:
    assert "tail copies" not in rows() and "scaling advice" not in rows()
    assert rows(copies=1)["tail copies"] == "1 speculative copy of slow tasks, 0 finished first"
    assert rows(copies=3, copies_won=2)["tail copies"].startswith("3 speculative copies")
    assert rows(advice="request 4 (backlog 2 GPU-hours)")["scaling advice"].startswith("request")
