"""A real run on a local cluster whose pool follows an availability trace: workers are
evicted (hard and graceful) and added as the trace says, the pool is empty for a while, and
every item still ends exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pervade.cli.jobfile import load_job_file
from pervade.cli.plan import build_plan
from pervade.core.churn import EvictionKind
from pervade.runtime.churn import ChurnHarness
from pervade.runtime.cluster import connect
from pervade.runtime.session import run_job
from pervade.traces import load_churn
from tests.helpers.jobs import generic_job, read_ids

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
ITEMS = 240

# Bamboo's AWS spot format (time_ms,event,node_id): two instances, both taken away by 8 s
# (none left for 4 s), two new ones at 12 s, one taken at 16 s, one more at 20 s.
SPOT = """0,add,node1
0,add,node2
4000,remove,node1
8000,remove,node2
12000,add,node3
12000,add,node4
16000,remove,node3
20000,add,node5
"""


def test_a_trace_evicts_and_adds_workers_and_every_item_ends_once(tmp_path: Path) -> None:
    job = generic_job(tmp_path, ITEMS, delay=0.1)
    plan = build_plan(load_job_file(job), tmp_path, lambda _text: None)
    trace = tmp_path / "spot.csv"
    trace.write_text(SPOT)
    # seed 1: the evictions at 4 s and 8 s are one of each kind.
    churn = load_churn(f"trace:{trace},speed=1,graceful=0.5,seed=1", workers=2)
    with (
        connect(None, 2) as client,
        ChurnHarness(client.cluster, client, churn, 2, grace_seconds=5) as harness,
    ):
        assert harness.trace is not None
        assert [e.kind for e in harness.schedule[:2]] == [
            EvictionKind.GRACEFUL,
            EvictionKind.HARD,
        ]
        stats = run_job(
            client, plan.job, plan.input, plan.parse, plan.output, plan.errors, plan.journal
        )
    results = Counter(read_ids(plan.output))
    assert set(results.values()) == {1}, "no duplicates"
    assert set(results) == {f"g{n:04d}" for n in range(ITEMS)}
    assert not read_ids(plan.errors)
    # The run outlasts the empty pool: both workers went and new ones joined.
    assert [(r.at // 4, r.kind) for r in harness.log[:2]] == [
        (1, EvictionKind.GRACEFUL),
        (2, EvictionKind.HARD),
    ]
    assert len(harness.joins) >= 2 and all(j.at >= 12 for j in harness.joins)
    assert stats.graceful_evictions >= 1 and stats.hard_evictions >= 1
