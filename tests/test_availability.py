"""Availability timelines and the join/evict schedules they give (pure)."""

from __future__ import annotations

import random

import pytest

from pervade.core.availability import (
    Availability,
    Join,
    TraceChurn,
    from_counts,
    from_events,
    scale,
    settle,
    stretch,
    trace_schedule,
    window,
)
from pervade.core.churn import ChurnTrace, Eviction, EvictionKind, Pick, parse_churn
from pervade.core.config import ConfigError


def steps(timeline: Availability) -> list[tuple[float, int]]:
    return list(zip(timeline.times, timeline.counts, strict=True))


def test_events_at_one_instant_apply_together_and_the_trace_ends_at_its_last_event() -> None:
    timeline = from_events([(0, 1), (0, 1), (60, 1), (120, -1), (120, -1), (120, 1), (300, -1)])
    assert steps(timeline) == [(0, 2), (60, 3), (120, 2), (300, 1)]
    assert timeline.end == 300
    assert timeline.at(-5) == 2 and timeline.at(119.9) == 3 and timeline.at(1e9) == 1


def test_events_before_the_first_add_count_zero_slots() -> None:
    assert steps(from_events([(480, 1), (540, 1)])) == [(0, 0), (480, 1), (540, 2)]


def test_more_removes_than_adds_is_an_error() -> None:
    with pytest.raises(ValueError, match="more slots removed than added at 60"):
        from_events([(0, 1), (60, -1), (60, -1)])


def test_counts_are_rebased_to_the_first_observation_and_repeats_merge() -> None:
    timeline = from_counts([(1000, 5), (1060, 5), (1120, 3), (1180, 4)], hold=60)
    assert steps(timeline) == [(0, 5), (120, 3), (180, 4)]
    assert timeline.end == 240


def test_settle_delays_gains_but_not_losses() -> None:
    # 2 slots; a third appears at 100 for 30 s (a blip), a fourth at 200 and stays.
    timeline = from_counts([(0, 2), (100, 3), (130, 2), (200, 3), (400, 2)], hold=100)
    settled = settle(timeline, 60)
    # The blip never lasts 60 s: gone. The slot of 200 counts from 260; the loss at 400 at once.
    assert steps(settled) == [(0, 2), (260, 3), (400, 2)]
    assert settled.end == timeline.end
    assert settle(timeline, 0) is timeline


def test_settle_is_a_sliding_minimum_on_a_staircase() -> None:
    timeline = from_counts([(0, 0), (10, 1), (20, 2), (30, 3), (40, 0)], hold=10)
    assert steps(settle(timeline, 15)) == [(0, 0), (25, 1), (35, 2), (40, 0)]


def test_window_cuts_and_rebases_and_holds_the_value_in_force_at_its_start() -> None:
    timeline = from_counts([(0, 4), (100, 6), (200, 1), (300, 5)], hold=100)
    assert steps(window(timeline, 150, 100)) == [(0, 6), (50, 1)]
    assert window(timeline, 150, 100).end == 100
    assert window(timeline, 250, None).end == 150  # to the trace's end
    assert window(timeline, 250, 1e9).end == 150  # cut at the trace's end
    with pytest.raises(ConfigError, match="churn start 400 s is at or past the end"):
        window(timeline, 400, None)


def test_scale_maps_the_peak_onto_the_pool_rounding_half_up_and_clipping() -> None:
    timeline = from_counts([(0, 0), (1, 10), (2, 25), (3, 40), (4, 5)])
    assert [c for _, c in steps(scale(timeline, 4, per=None, floor=0))] == [0, 1, 3, 4, 1]
    assert [c for _, c in steps(scale(timeline, 4, per=None, floor=2))] == [2, 3, 4, 2]
    assert [c for _, c in steps(scale(timeline, 2, per=8, floor=0))] == [0, 1, 2, 1]
    zero = from_counts([(0, 0), (5, 0)])
    assert scale(zero, 2, per=None, floor=1).counts == (1,)
    with pytest.raises(ConfigError, match="churn floor 3 exceeds the pool of 2 workers"):
        scale(timeline, 2, per=None, floor=3)


def test_stretch_turns_trace_seconds_into_real_seconds() -> None:
    timeline = stretch(from_counts([(0, 1), (600, 2)], hold=600), speed=60)
    assert steps(timeline) == [(0, 1), (10, 2)]
    assert timeline.end == 20


def churn(text: str, timeline: Availability) -> TraceChurn:
    spec = parse_churn(text)
    assert isinstance(spec, ChurnTrace)
    return TraceChurn(spec, timeline)


SPOT = from_events(
    [(0, 1), (0, 1), (0, 1), (0, 1), (600, -1), (600, -1), (1200, 1), (1800, -1), (2400, 1)]
)  # 4 slots, 2 at 600 s, 3 at 1200 s, 2 at 1800 s, 3 at 2400 s


def test_a_trace_schedule_joins_and_evicts_to_follow_the_scaled_trace() -> None:
    schedule = trace_schedule(churn("trace:x,speed=60,graceful=0", SPOT), 4, random.Random(0))
    assert schedule.initial == 4
    assert schedule.actions == (
        Eviction(10, EvictionKind.HARD, None),
        Eviction(10, EvictionKind.HARD, None),
        Join(20),
        Eviction(30, EvictionKind.HARD, None),
        Join(40),
    )
    assert schedule.pool.end == 40


def test_fit_plays_the_window_in_the_given_real_seconds_on_a_smaller_pool() -> None:
    spec = "trace:x,start=10m,length=20m,fit=100,graceful=1"
    schedule = trace_schedule(churn(spec, SPOT), 2, random.Random(0))
    # window 600..1800 s: 2, 3 at 1200 s, 2 at its end (peak 3 -> 2 workers: 2 slots are
    # round(2 * 2/3) = 1 worker); after the window the pool stays as it is at 1800 s.
    assert steps(schedule.pool) == [(0, 1), (50, 2), (100, 1)]
    assert schedule.actions == (Join(50), Eviction(100, EvictionKind.GRACEFUL, None))
    assert schedule.pool.end == 100


def test_the_seed_repeats_kinds_and_picks_and_the_graceful_share_holds() -> None:
    rng_trace = from_counts([(float(t), (t * 7919) % 13) for t in range(0, 4000)], hold=1)
    text = "trace:x,speed=1,graceful=0.3,pick=random,seed=4"
    one = trace_schedule(churn(text, rng_trace), 13, random.Random(4))
    assert one == trace_schedule(churn(text, rng_trace), 13, random.Random(4))
    assert one != trace_schedule(churn(text, rng_trace), 13, random.Random(5))
    evictions = [a for a in one.actions if isinstance(a, Eviction)]
    assert all(e.pick is not None and 0 <= e.pick < 1 for e in evictions)
    graceful = sum(e.kind is EvictionKind.GRACEFUL for e in evictions) / len(evictions)
    assert abs(graceful - 0.3) < 0.03
    # Replaying the actions from the initial pool gives the pool after every instant.
    sizes = {0.0: one.initial}
    for action in one.actions:
        sizes[action.at] = sizes[max(sizes)] + (1 if isinstance(action, Join) else -1)
    assert sizes == dict(zip(one.pool.times, one.pool.counts, strict=True))


def test_settle_in_a_spec_removes_short_blips() -> None:
    blips = from_counts([(0, 1), (60, 2), (120, 1), (600, 2)], hold=600)
    plain = trace_schedule(churn("trace:x,speed=60", blips), 2, random.Random(0))
    settled = trace_schedule(churn("trace:x,speed=60,settle=5m", blips), 2, random.Random(0))
    assert [type(a).__name__ for a in plain.actions] == ["Join", "Eviction", "Join"]
    assert settled.actions == (Join(15),)  # the slot of 600 s counts from 900 s


def test_parse_trace_reads_every_field() -> None:
    spec = parse_churn(
        "trace:bamboo-p3,start=2h,length=90m,fit=120,per=4,floor=1,settle=10m,"
        "graceful=0.25,pick=random,seed=3"
    )
    assert spec == ChurnTrace("bamboo-p3", 7200, 5400, None, 120, 4, 1, 600, 0.25, Pick.RANDOM, 3)
    assert parse_churn("trace:./my trace.csv") == ChurnTrace("./my trace.csv")
    assert parse_churn("trace:x,speed=600,start=1.5d") == ChurnTrace("x", 129600, speed=600)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trace:", "expected 'rate:mtbe=SECONDS"),
        ("trace:x,speed=10,fit=60", "speed and fit exclude each other"),
        ("trace:x,start=2x", "field start: '2x' is not a duration"),
        ("trace:x,pick=newest", "field pick: 'newest' is not one of stack, random"),
        ("trace:x,floor=1.5", "field floor: invalid literal"),
        ("trace:x,speedy=1", "unknown or malformed field 'speedy=1'"),
        ("trace:x,speed=0", "speed must be positive"),
        ("trace:x,graceful=1.5", "graceful must be a share"),
        ("trace:,speed=1", "name a trace or a trace file"),
    ],
)
def test_bad_trace_specs_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_churn(text)
