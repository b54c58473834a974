"""Live counters of a run, for progress displays and the final summary."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


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
    elapsed: float = 0.0
    _window: deque[tuple[float, int, int]] = field(default_factory=deque, repr=False)

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
