"""A deterministic SimPy simulator of opportunistic GPU pools that drives the real
`core.Dispatcher`: policies proven here run unchanged in the runtime."""

from pervade.sim.engine import Simulation, SimulationError, simulate
from pervade.sim.model import GpuClass, Job, Loads, Pool, Scenario
from pervade.sim.result import Sample, SimResult, print_table, table

__all__ = [
    "GpuClass",
    "Job",
    "Loads",
    "Pool",
    "Sample",
    "Scenario",
    "SimResult",
    "Simulation",
    "SimulationError",
    "print_table",
    "simulate",
    "table",
]
