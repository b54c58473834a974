"""Churn specifications and seeded eviction schedules (pure)."""

from __future__ import annotations

import itertools
import random

import pytest

from pervade.core.churn import ChurnRate, EvictionKind, eviction_schedule, parse_churn
from pervade.core.config import ConfigError


def test_parse_churn_reads_every_field() -> None:
    rate = parse_churn("rate:mtbe=60,graceful=0.25,rejoin=3,seed=7")
    assert rate == ChurnRate(60.0, 0.25, 3.0, 7)
    assert parse_churn("rate:mtbe=30") == ChurnRate(30.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("poisson:mtbe=5", "expected 'rate:mtbe=SECONDS"),
        ("rate:", "expected 'rate:mtbe=SECONDS"),
        ("rate:graceful=0.5", "mtbe (mean time between evictions) is required"),
        ("rate:mtbe=5,often=2", "unknown or malformed field 'often=2'"),
        ("rate:mtbe=0", "mtbe must be positive"),
        ("rate:mtbe=5,graceful=2", "graceful must be a share"),
        ("rate:mtbe=abc", "could not convert"),
    ],
)
def test_bad_churn_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_churn(text)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    one = eviction_schedule(ChurnRate(10, seed=1), workers=4, horizon=600, rng=random.Random(1))
    assert one == eviction_schedule(
        ChurnRate(10, seed=1), workers=4, horizon=600, rng=random.Random(1)
    )
    assert one != eviction_schedule(
        ChurnRate(10, seed=2), workers=4, horizon=600, rng=random.Random(2)
    )
    assert all(a.at < b.at for a, b in itertools.pairwise(one))
    assert all(0 <= e.pick < 1 and 0 < e.at < 600 for e in one)


def test_rate_and_graceful_share_match_the_spec_over_a_long_horizon() -> None:
    schedule = eviction_schedule(
        ChurnRate(60, graceful=0.3, seed=5), workers=10, horizon=60_000, rng=random.Random(5)
    )
    expected = 60_000 * 10 / 60  # workers / mtbe evictions per second
    assert abs(len(schedule) - expected) < 0.05 * expected
    graceful = sum(e.kind is EvictionKind.GRACEFUL for e in schedule) / len(schedule)
    assert abs(graceful - 0.3) < 0.03
