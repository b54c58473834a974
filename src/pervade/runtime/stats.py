"""Live counters of a run, for progress displays and the final summary."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from pervade.core.accounting import DispatchStats, Goodput


@dataclass
class RunStats:
    total: int | None = None
    resumed: int = 0  # outcomes accepted by earlier runs of the same journal
    results: int = 0
    errors: int = 0
    tokens: int = 0
    workers: int = 0
    live_contexts: int = 0
    context_loads: int = 0
    load_seconds: float = 0.0  # summed over workers
    infer_seconds: float = 0.0  # summed over workers
    tasks: int = 0
    requeued: int = 0
    hard_evictions: int = 0
    graceful_evictions: int = 0
    requeued_evicted: int = 0  # item attempts lost with workers that left without notice
    requeued_graceful: int = 0  # items handed back unstarted by draining workers
    restarts: int = 0  # worker processes replaced after their device became unusable
    oom_splits: int = 0  # batches halved because the device ran out of memory
    rerun_items: int = 0  # items whose work was lost at least once and ran again
    goodput: Goodput = field(default_factory=Goodput)
    load_tiers: Counter[str] = field(default_factory=Counter)  # context loads by artifact tier
    prefetches: int = 0  # contexts whose artifacts were asked to be staged ahead of a build
    staged: int = 0  # reports of a context staged on a node with nothing live (prefetch, demotion)
    copies: int = 0  # speculative copies of slow tail tasks
    copies_won: int = 0  # copies that finished before their original
    advice: str = ""  # the dispatcher's latest scaling advice, in words
    gpu_classes: Counter[str] = field(default_factory=Counter)  # workers of the run, by GPU
    elapsed: float = 0.0
    _window: deque[tuple[float, int, int]] = field(default_factory=deque, repr=False)

    def take_dispatch(self, churn: DispatchStats) -> None:
        """Copy what the dispatcher counted."""
        self.hard_evictions = churn.hard_evictions
        self.graceful_evictions = churn.graceful_evictions
        self.requeued_evicted = churn.requeued_evicted
        self.requeued_graceful = churn.requeued_graceful
        self.restarts = churn.restarts
        self.copies, self.copies_won = churn.copies, churn.copies_won

    def accounts(self) -> dict[str, float]:
        """What churn cost this run, as the journal keeps it."""
        goodput = self.goodput
        return {
            "results": self.results,
            "errors": self.errors,
            "hard_evictions": self.hard_evictions,
            "graceful_evictions": self.graceful_evictions,
            "restarts": self.restarts,
            "rerun_items": self.rerun_items,
            "worker_seconds": round(goodput.worker_seconds, 3),
            "useful_seconds": round(goodput.useful, 3),
            "loading_seconds": round(goodput.loading, 3),
            "lost_seconds": round(goodput.lost, 3),
            "idle_seconds": round(goodput.idle, 3),
            "goodput": round(goodput.share, 4),
        }

    @property
    def done(self) -> int:
        return self.resumed + self.results + self.errors

    def sample(self, now: float, horizon: float = 20.0) -> None:
        """Remember progress at `now` (run seconds) for rates over the last `horizon` s."""
        self.elapsed = now
        self._window.append((now, self.results + self.errors, self.tokens))
        while len(self._window) > 2 and now - self._window[1][0] > horizon:
            self._window.popleft()

    def _rate(self, index: int) -> float:
        if len(self._window) < 2:
            return 0.0
        first, last = self._window[0], self._window[-1]
        span = last[0] - first[0]
        return (last[index] - first[index]) / span if span > 0 else 0.0

    @property
    def items_per_second(self) -> float:
        return self._rate(1)

    @property
    def tokens_per_second(self) -> float:
        return self._rate(2)

    @property
    def eta_seconds(self) -> float | None:
        rate = self.items_per_second
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)
