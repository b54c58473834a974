"""A deterministic SimPy simulator of opportunistic GPU pools that drives the real
`core.Dispatcher`: policies proven here run unchanged in the runtime."""

from pervade.sim.engine import Simulation, SimulationError, simulate
from pervade.sim.model import POLICIES, GpuClass, Job, Loads, Pool, Replay, Scenario
from pervade.sim.policy import REFERENCE_BATCH, dispatch_config
from pervade.sim.result import Advice, Sample, SimResult, print_table, table

__all__ = [
    "POLICIES",
    "REFERENCE_BATCH",
    "Advice",
    "GpuClass",
    "Job",
    "Loads",
    "Pool",
    "Replay",
    "Sample",
    "Scenario",
    "SimResult",
    "Simulation",
    "SimulationError",
    "dispatch_config",
    "print_table",
    "simulate",
    "table",
]
