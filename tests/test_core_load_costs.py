"""Pure tests of the load cost estimates, the warm throughput and the demotion policy."""

from __future__ import annotations

import pytest

from pervade.core.cache_policy import Tier
from pervade.core.load_costs import (
    DEFAULT_LOAD_SECONDS,
    LoadCosts,
    Throughput,
    build_pays_off,
    parse_tier,
)
from pervade.core.residency import LiveContext, NoRoom, choose_demotions


def test_defaults_rank_the_tiers_fastest_first() -> None:
    costs = LoadCosts()
    order = [costs.estimate(tier) for tier in Tier]
    assert order == sorted(order)
    assert len(set(order)) == len(order)


def test_a_measured_tier_is_used_and_follows_new_samples_smoothly() -> None:
    costs = LoadCosts()
    costs.record("a", Tier.ORIGIN, 10.0)
    assert costs.estimate(Tier.ORIGIN) == 10.0
    costs.record("a", Tier.ORIGIN, 20.0)
    assert 10.0 < costs.estimate(Tier.ORIGIN) < 20.0  # moves toward the news, not all the way
    for _ in range(30):
        costs.record("a", Tier.ORIGIN, 20.0)
    assert costs.estimate(Tier.ORIGIN) == pytest.approx(20.0, abs=0.01)


def test_an_unmeasured_tier_scales_from_the_nearest_measured_one() -> None:
    costs = LoadCosts()
    costs.record("a", Tier.ORIGIN, 3.0)  # this cluster's origin is fast
    ratio = DEFAULT_LOAD_SECONDS[Tier.PEER] / DEFAULT_LOAD_SECONDS[Tier.ORIGIN]
    assert costs.estimate(Tier.PEER) == pytest.approx(3.0 * ratio)
    assert costs.estimate(Tier.HOST) < costs.estimate(Tier.PEER) < costs.estimate(Tier.ORIGIN)
    costs.record("a", Tier.DISK, 0.5)
    assert costs.estimate(Tier.HOST) == pytest.approx(0.5 * 5.0 / 10.0)  # DISK is nearer


def test_per_context_estimates_win_over_the_tier_wide_one() -> None:
    costs = LoadCosts()
    costs.record("big", Tier.ORIGIN, 100.0)
    costs.record("small", Tier.ORIGIN, 2.0)
    assert costs.estimate(Tier.ORIGIN, "big") == 100.0
    assert costs.estimate(Tier.ORIGIN, "small") == 2.0
    assert 2.0 < costs.estimate(Tier.ORIGIN, "unknown") < 100.0
    # A context without artifacts reports no tier: its loader costs the same anywhere.
    costs.record("plain", None, 4.0)
    assert costs.estimate(Tier.ORIGIN, "plain") == costs.estimate(Tier.HOST, "plain") == 4.0
    with pytest.raises(ValueError, match=">= 0"):
        costs.record("a", Tier.HOST, -1.0)


def test_parse_tier_accepts_names_and_ignores_what_it_does_not_know() -> None:
    assert parse_tier("peer") is Tier.PEER
    assert parse_tier(Tier.HOST) is Tier.HOST
    assert parse_tier(None) is None
    assert parse_tier("tape") is None


def test_throughput_does_not_charge_a_queued_task_its_wait() -> None:
    rates = Throughput()
    rates.finished("w1", "a", 10, started=0.0, now=5.0)  # 2 items/s
    rates.finished("w1", "a", 10, started=0.0, now=10.0)  # queued: ran from 5 to 10
    assert rates.rate("w1", "a") == pytest.approx(2.0)
    rates.finished("w1", "a", 0, started=10.0, now=11.0)  # handed everything back
    assert rates.rate("w1", "a") == pytest.approx(2.0)
    assert rates.combined(["w1", "w2"], "a") == pytest.approx(4.0)  # w2 counts as the mean
    assert rates.combined(["w2"], "a") == pytest.approx(2.0)  # w2 as the typical worker
    assert rates.combined(["w1"], "b") is None  # nobody measured on b
    rates.forget("w1")
    assert rates.rate("w1", "a") is None


def test_throughput_learns_per_gpu_class_and_outlives_the_workers() -> None:
    rates = Throughput()
    rates.joined("fast1", "h100")
    rates.joined("slow1", "t4")
    rates.finished("fast1", "a", 100, started=0.0, now=10.0)  # 10 items/s
    rates.finished("slow1", "a", 10, started=0.0, now=10.0)  # 1 item/s
    rates.forget("fast1")
    rates.joined("fast2", "h100")  # new, unmeasured: its class's speed
    assert rates.estimate("fast2", "a") == pytest.approx(10.0)
    rates.joined("odd", "a10")  # a class never seen: the typical worker
    assert rates.mean("a") is not None
    assert rates.estimate("odd", "a") == pytest.approx(rates.mean("a"))
    assert 1.0 < rates.estimate("odd", "a") < 10.0  # type: ignore[operator]


def test_a_build_pays_off_only_if_work_is_left_when_it_completes() -> None:
    assert build_pays_off(30.0, 100, None)  # speed unknown: build
    assert build_pays_off(30.0, 100, 0.0)
    assert build_pays_off(30.0, 100, 1.0)  # 100 s of work left for the warm ones
    assert not build_pays_off(30.0, 100, 10.0)  # done in 10 s, before the build is


# -- demotion ---------------------------------------------------------------------------


def live(name: str, size: int, used: float, busy: bool = False, queued: int = 0) -> LiveContext:
    return LiveContext(name, size, used, busy, queued)


def test_nothing_is_demoted_when_the_newcomer_fits() -> None:
    assert choose_demotions([live("a", 40, 1.0)], needed=60, budget=100) == ()
    assert choose_demotions([], needed=0, budget=0) == ()


def test_demotes_least_valuable_first_and_only_as_many_as_needed() -> None:
    held = [
        live("queued", 30, 1.0, queued=50),
        live("old", 30, 1.0),
        live("recent", 30, 9.0),
    ]
    assert choose_demotions(held, needed=40, budget=100) == ("old",)
    assert choose_demotions(held, needed=70, budget=100) == ("old", "recent")
    assert choose_demotions(held, needed=100, budget=100) == ("old", "recent", "queued")


def test_a_busy_context_is_never_demoted() -> None:
    held = [live("busy", 50, 0.0, busy=True), live("idle", 30, 5.0)]
    assert choose_demotions(held, needed=50, budget=100) == ("idle",)
    with pytest.raises(NoRoom, match=r"frees 30 of the 80 bytes.*busy"):
        choose_demotions(held, needed=100, budget=100)


def test_a_newcomer_larger_than_the_device_is_refused_at_once() -> None:
    with pytest.raises(NoRoom, match="more than the whole budget"):
        choose_demotions([], needed=200, budget=100, name="llama-8b")
    with pytest.raises(ValueError, match=">= 0"):
        choose_demotions([], needed=-1, budget=100)
