"""Where a context build or a prefetch should go: each worker's contexts as the dispatcher
knows them, and the choices made from them with the measured load costs.

The dispatcher owns the bookkeeping and calls these; they decide nothing about tasks on
live contexts, which always come first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pervade.core.cache_policy import Tier
from pervade.core.items import ItemRef
from pervade.core.load_costs import LoadCosts, build_pays_off
from pervade.core.states import ContextState

# The tier a staged copy is taken to be in when the worker did not say.
STAGED_DEFAULT = Tier.DISK
# Seconds after which a prefetch that never reported is taken as failed: a worker whose
# copy failed without a word must not go without prefetches for the rest of the run.
STAGE_TIMEOUT = 900.0


@dataclass(slots=True)
class WorkerState:
    name: str
    joined: float
    gpu_class: str = ""
    contexts: dict[str, ContextState] = field(default_factory=dict)
    staged_tiers: dict[str, Tier] = field(default_factory=dict)  # of contexts in STAGED
    load_failures: dict[str, int] = field(default_factory=dict)
    tasks: set[str] = field(default_factory=set)
    draining: bool = False
    deadline: float | None = None  # when a draining worker must be gone, if it said
    restarting: bool = False  # its process is being replaced: it takes no work meanwhile
    staging: str | None = None  # the context a prefetch is staging here, at most one
    staging_since: float = 0.0
    stage_failures: set[str] = field(default_factory=set)  # never asked to stage these again

    @property
    def takes_work(self) -> bool:
        return not (self.draining or self.restarting)

    def is_live(self, context: str) -> bool:
        state = self.contexts.get(context)
        return state is not None and state.is_live

    def holds(self, context: str) -> bool:
        """Live or staged here: a peer may copy its artifacts from this worker."""
        state = self.contexts.get(context)
        return state is not None and (state.is_live or state is ContextState.STAGED)

    @property
    def is_building(self) -> bool:
        return any(state.is_building for state in self.contexts.values())

    @property
    def is_occupied(self) -> bool:
        """Running or holding something already: time its next context's files can arrive
        in the background before it is asked to build it."""
        return (
            bool(self.tasks)
            or self.is_building
            or any(state.is_live for state in self.contexts.values())
        )


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the dispatcher tracks it until its worker reports."""

    id: str
    worker: str
    context: str
    items: tuple[ItemRef, ...]
    started: float
    group: bool  # an isolation task: its items run together and alone
    copy_of: str | None = None  # a speculative copy of this task


def load_tier(worker: WorkerState, context: str, holders: set[str]) -> Tier:
    """Where `worker` would get `context` from: its own staged copy, else a peer (one of
    `holders`, the workers with it live or staged), else the origin."""
    if worker.contexts.get(context) is ContextState.STAGED:
        return worker.staged_tiers.get(context, STAGED_DEFAULT)
    if len(holders) > 1 or (holders and worker.name not in holders):
        return Tier.PEER
    return Tier.ORIGIN


@dataclass(frozen=True, slots=True)
class Demand:
    """One context's work as placement sees it."""

    context: str
    pending: int  # items waiting for a task
    in_flight: int  # items in tasks not yet reported
    warm_rate: float | None = None  # items/s of its warm workers together (None: unknown)
    serving: int = 0  # workers with it live or being built
    holders: frozenset[str] = frozenset()  # workers a peer copy could come from


def choose_build(
    worker: WorkerState,
    demands: list[Demand],
    costs: LoadCosts,
    max_load_failures: int,
    mean_between_losses: float = math.inf,
) -> str | None:
    """The context `worker` (idle) should build, or None.

    Each candidate's expected load (own staged copy < peer < origin, as measured) is weighed
    by its backlog per worker already on it; a build the context's warm workers would make
    pointless, by finishing its work before the build completes, is not started; nor is one
    that the worker's class would, on average, lose before it has worked as long again as
    the build took (`mean_between_losses`: seconds), while warm workers carry the work."""
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for rank, demand in enumerate(demands):
        context = demand.context
        if not demand.pending or worker.is_live(context):
            continue
        if worker.load_failures.get(context, 0) >= max_load_failures:
            continue
        holders = set(demand.holders)
        seconds = costs.estimate(load_tier(worker, context, holders), context)
        remaining = demand.pending + demand.in_flight
        if not build_pays_off(seconds, remaining, demand.warm_rate):
            continue
        if demand.warm_rate and mean_between_losses < 2 * seconds:
            continue
        # Seconds of build per item of backlog each of its workers would have: cheap loads of
        # contexts short of workers first. The small constant keeps a free (GPU) load
        # comparable across backlogs.
        score = (seconds + 1e-3) * (1 + demand.serving) / demand.pending
        if best is None or (score, rank) < best:
            best, chosen = (score, rank), context
    return chosen


def may_stage(worker: WorkerState, context: str, max_load_failures: int) -> bool:
    """Whether `worker` could stage `context` now: busy with something else (so that the
    copy overlaps useful work), no stage under way, not leaving, and the context neither
    held, built, nor failed there before."""
    return (
        worker.takes_work
        and worker.staging is None
        and worker.is_occupied
        and not worker.holds(context)
        and not worker.contexts.get(context, ContextState.ABSENT).is_building
        and context not in worker.stage_failures
        and worker.load_failures.get(context, 0) < max_load_failures
    )


def choose_stage(worker: WorkerState, demands: list[Demand], max_load_failures: int) -> str | None:
    """The context whose artifacts `worker` should stage in the background, or None: of
    those with waiting work that `may_stage` allows, the one with the most."""
    candidates = [
        d for d in demands if d.pending and may_stage(worker, d.context, max_load_failures)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: d.pending).context
