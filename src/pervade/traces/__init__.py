"""Real availability traces: the bundled ones by name, readers for their formats, and the
churn spec with its trace read (`load_churn`), ready for the churn harness."""

from __future__ import annotations

from pathlib import Path
from random import Random

from pervade.core.availability import TraceChurn, trace_schedule
from pervade.core.churn import ChurnRate, parse_churn
from pervade.core.config import ConfigError
from pervade.traces.readers import TraceError, read_trace

DATA = Path(__file__).resolve().parent / "data"
NAMED = {
    "bamboo-p3": "bamboo-spot/p3-trace.csv",
    "bamboo-g4dn": "bamboo-spot/g4dn-trace.csv",
    "gcp-v100": "bamboo-spot/gcloud/v100x1-east1c.txt",
    "gcp-a100": "bamboo-spot/gcloud/a100x1-east1b.txt",
    "helios-vc6YE": "helios-occupancy/earth/vc6YE/cluster_sequence_vc.csv.gz",
    "helios-vchbv": "helios-occupancy/earth/vchbv/cluster_sequence_vc.csv.gz",
    "philly": "helios-occupancy/philly_node_sequence.csv.gz",
}

__all__ = ["NAMED", "TraceError", "load_churn", "read_trace", "trace_path"]


def trace_path(source: str) -> Path:
    """A bundled trace's file by name, or `source` as a path (relative to the current
    directory)."""
    if source in NAMED:
        return DATA / NAMED[source]
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"churn trace {source!r} is neither a bundled trace ({', '.join(NAMED)}) nor a file"
        )
    return path


def load_churn(text: str, workers: int) -> ChurnRate | TraceChurn:
    """`parse_churn`, with a trace read and its schedule checked against a pool of
    `workers`, so a bad trace or window stops the run before it starts."""
    spec = parse_churn(text)
    if isinstance(spec, ChurnRate):
        return spec
    churn = TraceChurn(spec, read_trace(trace_path(spec.source)))
    try:
        trace_schedule(churn, workers, Random(spec.seed))  # the harness makes it again
    except ConfigError as exc:
        raise ConfigError(f"--churn {text!r}: {exc}") from None
    return churn
