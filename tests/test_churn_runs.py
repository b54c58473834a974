"""Property-style: seeded random churn over many small runs; every time, every submitted
item ends with exactly one outcome: a result, or the error record it deserves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pervade.cli.main import main
from tests.helpers.jobs import generic_job, read_ids, write_jsonl

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]
ITEMS = 120
BAD = {f"g{n:04d}" for n in range(0, ITEMS, 17)}


@pytest.mark.parametrize("seed", [1, 6, 7, 12])  # schedules that evict during the run
def test_random_churn_never_loses_or_duplicates_an_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    job = generic_job(tmp_path, ITEMS, delay=0.06)
    records = [{"id": f"g{n:04d}", "n": n, "bad": f"g{n:04d}" in BAD} for n in range(ITEMS)]
    write_jsonl(tmp_path / "items.jsonl", records)
    code = main(
        ["run", str(job), "--quiet", "--churn", f"rate:mtbe=3,graceful=0.5,rejoin=1,seed={seed}"]
    )
    printed = capsys.readouterr().out
    assert code == 1, printed  # the bad items are error records, nothing else failed
    assert "evictions" in printed, "the schedule evicted nobody during the run"
    results = Counter(read_ids(tmp_path / "out" / "results.jsonl"))
    errors = [json.loads(line) for line in (tmp_path / "out" / "results.errors.jsonl").open()]
    assert set(results.values()) == {1}, "no duplicates"
    assert set(results) == {r["id"] for r in records} - BAD
    assert sorted(e["id"] for e in errors) == sorted(BAD)
    assert all(e["field"] == "bad" for e in errors), "evictions never become item errors"
