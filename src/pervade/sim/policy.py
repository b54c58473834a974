"""The dispatcher's settings under each simulated policy: one `core.Dispatcher` for all, told
what the policy allows."""

from __future__ import annotations

import dataclasses

from pervade.core.config import DispatchConfig
from pervade.sim.model import Scenario

# The user's batch size of reference PCM (and naive) when none is given: a typical
# hand-picked batch, the old dispatcher's largest task. Pass `batch` to compare others.
REFERENCE_BATCH = 64


def dispatch_config(scenario: Scenario) -> DispatchConfig:
    """`scenario.dispatch` as its policy runs it. Every policy is told the pool's true task
    overhead, which is what the runtime would measure."""
    config = dataclasses.replace(
        scenario.dispatch, task_overhead=scenario.pool.task_overhead_seconds
    )
    batch = scenario.batch
    match scenario.policy:
        case "reference" | "naive":
            # Naive is reference PCM without the contexts: the same fixed user batch.
            config = dataclasses.replace(
                config,
                task_items=batch or REFERENCE_BATCH,
                adaptive=False,
                speculate=False,
                prefetch=False,
            )
            if scenario.policy == "naive":
                # A worker's context lives for one task, so a second task queued behind it
                # would only find the context gone.
                config = dataclasses.replace(config, max_in_flight=1)
            return config
        case _:  # pervade, static
            if batch is not None:
                config = dataclasses.replace(config, task_items=batch)
            return config


def drains(scenario: Scenario) -> bool:
    """Whether a worker given notice drains (reports what it finished, hands back the rest)
    rather than running on until it is killed."""
    return scenario.policy != "reference"
