"""Pure tests of the scaling advisor: assert on the advice it gives."""

from __future__ import annotations

import random

import pytest

from pervade.core.config import ConfigError
from pervade.core.decisions import ScaleAdvice
from pervade.core.scaling import ScalingAdvisor, ScalingConfig

HOUR = 3600.0
MANY = 10**6  # items: no cap


def eager(**kw: float) -> ScalingConfig:
    """No persistence and no interval: the target is advised as soon as it leaves the band."""
    fields = {"grow_after": 0.0, "release_after": 0.0, "min_interval": 0.0, **kw}
    return ScalingConfig(**fields)  # type: ignore[arg-type]


def started(advisor: ScalingAdvisor, count: int, startup: float, at: float = 0.0) -> None:
    """`count` workers join at `at` and become ready `startup` seconds later."""
    for i in range(count):
        advisor.joined(f"w{i}", at)
        advisor.ready(f"w{i}", at + startup)


def target(advisor: ScalingAdvisor, now: float, backlog: float, workers: int) -> int:
    advice = advisor.advise(now, backlog, workers, idle=0, items=MANY)
    return workers if advice is None else advice.workers


def test_the_target_finishes_the_backlog_within_the_horizon_counting_start_up() -> None:
    advisor = ScalingAdvisor(eager(startup_seconds=600.0))
    # 2 warm workers do 2 h of the backlog in the hour; each new one does 3000 s after start-up.
    advice = advisor.advise(0.0, 2 * HOUR + 3 * 3000.0, 2, idle=0, items=MANY)
    assert advice is not None and (advice.workers, advice.change) == (5, 3)
    assert "4.50 GPU-hours" in advice.reason and "start-up 600 s" in advice.reason
    assert "request 3" in advice.reason


def test_more_backlog_asks_for_more_workers() -> None:
    wanted = [target(ScalingAdvisor(eager()), 0.0, hours * HOUR, 4) for hours in (1, 10, 40, 160)]
    assert wanted[0] == 4  # four workers already finish one GPU-hour within the hour
    assert wanted == sorted(wanted) and len(set(wanted)) == 4


def test_a_drained_backlog_releases_idle_workers_only_after_the_surplus_persists() -> None:
    advisor = ScalingAdvisor(ScalingConfig(release_after=300.0, min_interval=0.0))
    assert advisor.advise(0.0, 0.0, 10, idle=10, items=0) is None
    assert advisor.advise(299.0, 0.0, 10, idle=10, items=0) is None
    advice = advisor.advise(300.0, 0.0, 10, idle=10, items=0)
    assert advice is not None and (advice.workers, advice.change) == (0, -10)
    assert "release 10 idle" in advice.reason


def test_only_idle_workers_are_released() -> None:
    advisor = ScalingAdvisor(eager())
    advice = advisor.advise(0.0, 0.5 * HOUR, 10, idle=3, items=MANY)
    assert advice is not None and (advice.workers, advice.change) == (7, -3)
    assert ScalingAdvisor(eager()).advise(0.0, 0.5 * HOUR, 10, idle=0, items=MANY) is None


def test_a_request_needs_less_persistence_than_a_release() -> None:
    config = ScalingConfig(grow_after=60.0, release_after=300.0, min_interval=0.0)
    grow, shrink = ScalingAdvisor(config), ScalingAdvisor(config)
    for now in (0.0, 60.0):
        up = grow.advise(now, 20 * HOUR, 5, idle=0, items=MANY)
        down = shrink.advise(now, 1 * HOUR, 5, idle=5, items=MANY)
    assert up is not None and up.change > 0
    assert down is None


def test_no_workers_gets_one_at_once_however_small_the_backlog() -> None:
    advisor = ScalingAdvisor()  # defaults: persistence applies only once there are workers
    started(advisor, 1, 900.0)
    advisor.left("w0", 1000.0, evicted=False)
    advice = advisor.advise(1000.0, 10.0, 0, idle=0, items=2)
    assert advice is not None and (advice.workers, advice.change) == (1, 1)


def test_start_up_makes_a_small_backlog_not_worth_a_request() -> None:
    def advice_after(startup: float) -> ScaleAdvice | None:
        advisor = ScalingAdvisor(eager(horizon=600.0))
        started(advisor, 1, startup)
        # One worker finishes 600 of the 1500 s in the horizon: more would finish sooner.
        return advisor.advise(startup, 1500.0, 1, idle=0, items=MANY)

    fast = advice_after(10.0)
    assert fast is not None and fast.change == 2
    assert advice_after(900.0) is None  # a new worker would start after the work is done
    slow = advice_after(300.0)  # worth one more worker, not the three the horizon alone wants
    assert slow is not None and (slow.workers, slow.change) == (2, 1)


def test_observed_start_up_replaces_the_configured_guess() -> None:
    advisor = ScalingAdvisor(ScalingConfig(startup_seconds=300.0))
    assert advisor.startup_seconds == 300.0
    started(advisor, 2, 40.0)
    advisor.ready("w0", 500.0)  # only the first context counts
    assert advisor.startup_seconds == 40.0


def test_evictions_raise_the_count_in_proportion_to_the_time_lost() -> None:
    calm, churned = ScalingAdvisor(eager()), ScalingAdvisor(eager())
    for advisor in (calm, churned):
        started(advisor, 10, 300.0)
    # In churned, a worker is lost (and replaced) every 300 s: 10 workers, ~3000 s per eviction.
    for k in range(1, 13):
        churned.left(f"w{k % 10}", k * 300.0, evicted=True)
        churned.joined(f"w{k % 10}", k * 300.0)
        churned.ready(f"w{k % 10}", k * 300.0 + 300.0)
        calm.left(f"w{k % 10}", k * 300.0, evicted=False)
        calm.joined(f"w{k % 10}", k * 300.0)
    assert calm.eviction_interval == float("inf")
    assert 2500.0 < churned.eviction_interval < 3500.0
    backlog = 40 * HOUR
    a = calm.advise(4000.0, backlog, 10, idle=0, items=MANY)
    b = churned.advise(4000.0, backlog, 10, idle=0, items=MANY)
    assert a is not None and b is not None
    assert b.workers > a.workers
    assert a.workers == 10 + 33  # ceil(30 h / (3600 - 300) s)
    assert "evicted every" in b.reason and "useful 9" in b.reason  # about 90% of its time
    assert "no evictions seen" in a.reason


def test_old_evictions_fade_so_a_calmer_pool_is_believed() -> None:
    advisor = ScalingAdvisor()  # memory: an hour
    started(advisor, 10, 0.0)
    advisor.left("w0", 600.0, evicted=True)
    advisor.joined("w0", 600.0)
    early = advisor.eviction_interval
    assert 5000.0 < early < 6000.0  # ~5500 worker-seconds (faded a little) per eviction
    advisor.advise(4 * HOUR, 0.0, 10, idle=0, items=0)
    assert advisor.eviction_interval > 100 * early


def test_never_more_workers_than_items() -> None:
    advice = ScalingAdvisor(eager()).advise(0.0, 100 * HOUR, 1, idle=0, items=3)
    assert advice is not None and advice.workers == 3


def test_unchanged_advice_is_not_repeated_and_changes_are_spaced() -> None:
    advisor = ScalingAdvisor(ScalingConfig(grow_after=0.0, min_interval=120.0))
    first = advisor.advise(0.0, 20 * HOUR, 5, idle=0, items=MANY)
    assert first is not None
    assert advisor.advise(10.0, 20 * HOUR, 5, idle=0, items=MANY) is None  # still standing
    assert advisor.advise(200.0, 20 * HOUR, 5, idle=0, items=MANY) is None  # the same target
    assert advisor.advise(60.0, 60 * HOUR, 5, idle=0, items=MANY) is None  # too soon
    later = advisor.advise(130.0, 60 * HOUR, 5, idle=0, items=MANY)
    assert later is not None and later.workers > first.workers


def test_a_small_difference_stays_within_the_band() -> None:
    advisor = ScalingAdvisor(eager(band=0.1))
    # 50 workers finish 50 h in the hour; 53 h wants 51 or 52 of them: within 10%.
    assert advisor.advise(0.0, 53 * HOUR, 50, idle=0, items=MANY) is None
    assert advisor.advise(1.0, 60 * HOUR, 50, idle=0, items=MANY) is not None


def changes_under_noise(config: ScalingConfig, seed: int) -> tuple[int, int]:
    """Advice changes, and reversals of direction, over 4 h of a steady backlog sampled every
    30 s with ±25% noise; the cluster follows every advice at once, all its workers idle."""
    rng = random.Random(seed)
    advisor = ScalingAdvisor(config)
    workers, changes, reversals, last_sign = 0, 0, 0, 0
    for step in range(480):
        backlog = 40 * HOUR * (1 + rng.uniform(-0.25, 0.25))
        advice = advisor.advise(step * 30.0, backlog, workers, idle=workers, items=MANY)
        if advice is not None:
            sign = 1 if advice.change > 0 else -1
            reversals += last_sign not in (0, sign)
            changes, last_sign, workers = changes + 1, sign, advice.workers
    return changes, reversals


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_backlog_does_not_make_the_advice_oscillate(seed: int) -> None:
    changes, reversals = changes_under_noise(ScalingConfig(), seed)
    assert 1 <= changes <= 4 and reversals <= 1
    # The same noise without hysteresis flips back and forth: the measure can tell.
    changes, reversals = changes_under_noise(eager(band=0.0), seed)
    assert changes > 50 and reversals > 50


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("horizon", 0.0, "scaling.horizon must be positive finite seconds"),
        ("memory", float("inf"), "scaling.memory must be positive finite seconds"),
        ("startup_seconds", -1.0, "scaling.startup_seconds must be a finite number >= 0"),
        ("worth_margin", float("nan"), "scaling.worth_margin must be a finite number >= 0"),
        ("min_interval", -5.0, "scaling.min_interval must be a finite number >= 0"),
        ("band", 1.0, r"scaling.band must be a share in \[0, 1\)"),
        ("min_useful", 0.0, r"scaling.min_useful must be a share in \(0, 1\]"),
        ("release_after", 10.0, r"scaling.release_after \(10.0\) must be at least"),
        ("samples", 0, "scaling.samples must be an integer >= 1"),
        ("min_workers", True, "scaling.min_workers must be an integer >= 0"),
        ("max_workers", 0, "scaling.max_workers must be None or an integer"),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScalingConfig(**{field: value})  # type: ignore[arg-type]


def test_bounds_hold_the_advice() -> None:
    advisor = ScalingAdvisor(eager(min_workers=2, max_workers=8))
    up = advisor.advise(0.0, 100 * HOUR, 1, idle=0, items=MANY)
    assert up is not None and up.workers == 8
    down = ScalingAdvisor(eager(min_workers=2)).advise(0.0, 0.0, 6, idle=6, items=0)
    assert down is not None and down.workers == 2
