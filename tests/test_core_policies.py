"""Pure tests of the throughput policies: adaptive task sizes, speed per GPU class, placement
by expected completion, speculative tail copies and scaling advice, asserted on decisions."""

from __future__ import annotations

import pytest

from pervade.core import (
    CancelTask,
    ContextState,
    ContextStateChanged,
    DispatchConfig,
    Dispatcher,
    ItemsSubmitted,
    LoadContext,
    RunTask,
    ScaleAdvice,
    TaskFinished,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.sizing import Hazard, SizeInputs, adaptive_size, young_daly_seconds
from tests.test_core_dispatcher import CTX, of, refs

WORK = 0.5  # seconds per item at speed 1


def warm(d: Dispatcher, worker: str, gpu_class: str = "", now: float = 0.0) -> list[RunTask]:
    d.handle(WorkerJoined(worker, gpu_class=gpu_class), now)
    return of(RunTask, d.handle(ContextStateChanged(worker, CTX, ContextState.WARM, 1.0), now))


class Pool:
    """Plays the workers: each runs its tasks in order at its speed (items/s)."""

    def __init__(self, d: Dispatcher, speeds: dict[str, float]) -> None:
        self.d, self.speeds = d, speeds
        self.free_at = dict.fromkeys(speeds, 0.0)
        self.ends: dict[str, tuple[float, RunTask]] = {}
        self.sizes: dict[str, list[int]] = {w: [] for w in speeds}
        self.decisions: list[object] = []

    def take(self, out: list[object], now: float) -> None:
        self.decisions += out
        for decision in out:
            if isinstance(decision, RunTask):
                start = max(now, self.free_at[decision.worker])
                end = start + len(decision.items) / self.speeds[decision.worker]
                self.free_at[decision.worker] = end
                self.ends[decision.task] = (end, decision)
                self.sizes[decision.worker].append(len(decision.items))
            elif isinstance(decision, CancelTask):
                self.ends.pop(decision.task, None)

    def run(self, until: float = 1e9) -> float:
        now = 0.0
        while self.ends:
            task, (now, _) = min(self.ends.items(), key=lambda kv: (kv[1][0], kv[0]))
            if now > until:
                break
            del self.ends[task]
            self.take(list(self.d.handle(TaskFinished(task), now)), now)
        return now


def start(d: Dispatcher, pool: Pool, classes: dict[str, str], items: int) -> None:
    pool.take(list(d.handle(ItemsSubmitted(CTX, refs("i", items)), 0.0)), 0.0)
    for worker, gpu_class in classes.items():
        pool.take(list(warm(d, worker, gpu_class)), 0.0)


def test_faster_workers_get_larger_tasks_once_their_speed_is_known() -> None:
    d = Dispatcher(DispatchConfig(min_task_items=1, max_task_items=100_000))
    pool = Pool(d, {"fast": 8.0, "slow": 1.0})
    start(d, pool, {"fast": "h100", "slow": "t4"}, 4000)
    pool.run()
    fast, slow = pool.sizes["fast"], pool.sizes["slow"]
    assert sum(fast[2:6]) > 3 * sum(slow[2:6])
    assert sum(fast) > 5 * sum(slow)  # the fast one did most of the work


def test_the_users_batch_size_is_only_a_start() -> None:
    def sizes(batch: int) -> tuple[list[int], float]:
        d = Dispatcher(DispatchConfig(task_items=batch, min_task_items=1, max_task_items=10**6))
        pool = Pool(d, {f"w{k}": 2.0 for k in range(4)})
        start(d, pool, {f"w{k}": "a" for k in range(4)}, 4000)
        return pool.sizes["w0"], pool.run()

    tiny, tiny_end = sizes(1)
    huge, huge_end = sizes(1000)
    assert tiny[0] == 1 and max(tiny) > 20  # grew once the speed was measured
    assert huge[0] < 1000  # never more than the backlog's fair share per slot
    assert tiny_end == pytest.approx(huge_end, rel=0.1)


def test_without_adaptive_sizing_every_task_takes_the_users_batch() -> None:
    d = Dispatcher(DispatchConfig(task_items=7, adaptive=False, speculate=False))
    pool = Pool(d, {"w1": 1.0, "w2": 4.0})
    start(d, pool, {"w1": "", "w2": ""}, 70)
    pool.run()
    assert {n for s in pool.sizes.values() for n in s} == {7}


def test_tasks_come_in_whole_device_batches_and_only_the_last_is_part_full() -> None:
    d = Dispatcher(DispatchConfig(task_quantum=16, speculate=False))
    pool = Pool(d, {"w1": 3.0, "w2": 5.0})
    start(d, pool, {"w1": "a", "w2": "a"}, 1000)
    pool.run()
    sizes = [n for run in pool.decisions if isinstance(run, RunTask) for n in [len(run.items)]]
    assert sum(sizes) == 1000
    assert all(n % 16 == 0 for n in sizes[:-1]) and 0 < sizes[-1] <= 1000
    assert sum(1 for n in sizes if n % 16) <= 1
    # Without the quantum the same run hands out sizes that are not whole batches.
    plain = Dispatcher(DispatchConfig(speculate=False))
    other = Pool(plain, {"w1": 3.0, "w2": 5.0})
    start(plain, other, {"w1": "a", "w2": "a"}, 1000)
    other.run()
    assert sum(1 for run in other.decisions if isinstance(run, RunTask) and len(run.items) % 16) > 1


def test_a_class_that_loses_workers_gets_shorter_tasks() -> None:
    hazard = Hazard()
    for k in range(10):
        hazard.joined("spot", k * 600.0)
        hazard.left("spot", k * 600.0, k * 600.0 + 600.0, lost=True)
        hazard.joined("dedicated", 0.0)
    risky, steady = hazard.mean_seconds("spot", 6000.0), hazard.mean_seconds("dedicated", 6000.0)
    assert risky < 1200 < steady
    size = {
        name: adaptive_size(
            SizeInputs(pending=100_000, rate=10.0, share=0.5, slots=2, mean_between_losses=m),
            overhead=0.5,
            tasks_per_slot=4,
            start=16,
            bounds=(1, 10**6),
        )
        for name, m in (("spot", risky), ("steady", steady))
    }
    assert size["spot"] == pytest.approx(young_daly_seconds(0.5, risky) * 10.0, abs=1)
    assert size["spot"] < size["steady"] / 2


def test_a_graceful_departure_is_no_loss_but_a_hard_one_is() -> None:
    d = Dispatcher()
    d.handle(WorkerJoined("a", gpu_class="spot"), 0.0)
    d.handle(WorkerJoined("b", gpu_class="spot"), 0.0)
    before = d.hazard.mean_seconds("spot", 100.0)
    d.handle(WorkerLeft("a"), 100.0)  # no notice
    assert d.hazard.losses("spot") == 1
    assert d.hazard.mean_seconds("spot", 100.0) < before


def test_tasks_go_to_the_fastest_free_warm_worker_first() -> None:
    d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1, speculate=False))
    pool = Pool(d, {"slow": 1.0, "fast": 10.0})
    start(d, pool, {"slow": "t4", "fast": "h100"}, 40)
    pool.run()  # both measured; the backlog is done
    pool.sizes = {w: [] for w in pool.speeds}
    pool.free_at = dict.fromkeys(pool.speeds, 100.0)
    out = list(d.handle(ItemsSubmitted(CTX, refs("late", 1)), 100.0))
    assert [t.worker for t in of(RunTask, out)] == ["fast"]


def test_an_idle_warm_worker_copies_the_slowest_tail_task_and_the_first_result_wins() -> None:
    d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1))
    pool = Pool(d, {"slow": 0.2, "fast": 5.0})
    start(d, pool, {"slow": "t4", "fast": "h100"}, 60)
    end = pool.run()
    copies = [t for t in of(RunTask, pool.decisions) if t.worker == "fast" and t.items in
              {u.items for u in of(RunTask, pool.decisions) if u.worker == "slow"}]  # fmt: skip
    assert copies, "the fast worker never copied the slow worker's task"
    assert d.stats.copies >= 1 and d.stats.copies_won >= 1
    assert of(CancelTask, pool.decisions), "the slower copy was not cancelled"
    assert d.is_idle
    # Without copies the job waits for the slow worker's last task.
    d2 = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1, speculate=False))
    pool2 = Pool(d2, {"slow": 0.2, "fast": 5.0})
    start(d2, pool2, {"slow": "t4", "fast": "h100"}, 60)
    assert end < pool2.run()
    assert d2.stats.copies == 0


def test_no_copy_when_it_would_not_finish_clearly_sooner() -> None:
    d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1))
    pool = Pool(d, {"a": 1.0, "b": 1.0})
    start(d, pool, {"a": "x", "b": "x"}, 40)
    pool.run()
    assert d.stats.copies == 0  # equal workers: a copy never beats the original


def test_the_dispatcher_advises_more_workers_for_a_large_backlog() -> None:
    d = Dispatcher(DispatchConfig(min_task_items=1))
    pool = Pool(d, {"w1": 1.0})
    start(d, pool, {"w1": "a"}, 100_000)
    pool.run(until=400.0)
    advice = of(ScaleAdvice, pool.decisions)
    assert advice and advice[-1].workers > 1 and advice[-1].change > 0
    assert "backlog" in advice[-1].reason


def test_a_draining_worker_with_time_left_gets_only_work_that_fits_it() -> None:
    from pervade.core import WorkerDraining

    def drained(grace: float | None) -> tuple[list[RunTask], float]:
        d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1, task_overhead=1.0))
        pool = Pool(d, {"w1": 2.0, "w2": 2.0})
        start(d, pool, {"w1": "a", "w2": "a"}, 10_000)
        pool.run(until=200.0)  # speeds measured; both busy
        [(end, task)] = [(e, t) for e, t in pool.ends.values() if t.worker == "w1"]
        d.handle(WorkerDraining("w1", grace), end - 1.0)
        out = of(RunTask, d.handle(TaskFinished(task.task), end))
        return out, d.rates.estimate("w1", CTX) or 0.0

    assert drained(None)[0] == []
    [task], rate = drained(21.0)
    assert rate == pytest.approx(2.0, rel=0.2)
    # (21 s less the 1 s passed, less 1 s overhead) at the measured speed, 0.7 of it to be safe
    assert task.worker == "w1" and len(task.items) == int(rate * 19.0 * 0.7)
    assert drained(2.2)[0] == []  # not even one item fits


def test_no_build_on_a_class_that_loses_workers_faster_than_it_loads_while_others_work() -> None:
    def builds(flaky_losses: int) -> list[str]:
        d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1))
        pool = Pool(d, {"steady": 1.0})
        start(d, pool, {"steady": "dedicated"}, 100_000)
        pool.run(until=50.0)  # the warm worker's speed is known
        now = 60.0
        for k in range(flaky_losses):  # a spot class seen to lose workers within seconds
            d.handle(WorkerJoined(f"gone{k}", gpu_class="spot"), now)
            d.handle(WorkerLeft(f"gone{k}"), now + 5.0)
            now += 5.0
        d.costs.record(CTX, None, 300.0)  # a build takes five minutes
        out = d.handle(WorkerJoined("new", gpu_class="spot"), now)
        return [x.context for x in out if isinstance(x, LoadContext) and x.worker == "new"]

    assert builds(0) == [CTX]  # nothing seen against the class: it builds
    assert builds(20) == []  # it would be gone long before the build paid back


def test_a_flaky_class_still_builds_when_no_worker_is_warm() -> None:
    d = Dispatcher()
    now = 0.0
    for k in range(20):
        d.handle(WorkerJoined(f"gone{k}", gpu_class="spot"), now)
        d.handle(WorkerLeft(f"gone{k}"), now + 5.0)
        now += 5.0
    d.handle(ItemsSubmitted(CTX, refs("i", 100)), now)
    out = d.handle(WorkerJoined("new", gpu_class="spot"), now)
    assert of(LoadContext, out), "with nobody warm, even a flaky worker must build"


def test_no_copy_of_a_task_shorter_than_what_a_copy_costs() -> None:
    def copies(overhead: float) -> int:
        d = Dispatcher(DispatchConfig(max_in_flight=1, min_task_items=1, task_overhead=overhead))
        pool = Pool(d, {"slow": 20.0, "fast": 200.0})  # items/s: tasks of well under a second
        start(d, pool, {"slow": "t4", "fast": "h100"}, 60)
        pool.run()
        return d.stats.copies

    assert copies(0.0) >= 1  # free copies: the slow worker's last task is copied
    assert copies(2.0) == 0  # each copy would cost more than it could save
