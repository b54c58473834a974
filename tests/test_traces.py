"""Trace readers: the bundled traces read as their READMEs describe them, and malformed files
are refused with the file, line and field."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pervade.core.availability import Availability, TraceChurn
from pervade.core.churn import ChurnRate
from pervade.core.config import ConfigError
from pervade.traces import NAMED, TraceError, load_churn, read_trace, trace_path

HELIOS_HEADER = (
    "time,total_job_num,running_job_num,pending_job_num,total_gpujob_num,running_gpujob_num,"
    "pending_gpujob_num,total_gpu_num,running_gpu_num,pending_gpu_num,idle_gpu_num,"
    "gpu_utilization"
)


def mean(timeline: Availability) -> float:
    ends = [*timeline.times[1:], timeline.end]
    spans = [b - a for a, b in zip(timeline.times, ends, strict=True)]
    return sum(c * s for c, s in zip(timeline.counts, spans, strict=True)) / timeline.end


def test_every_named_trace_is_bundled_with_its_licence() -> None:
    for name in NAMED:
        path = trace_path(name)
        assert path.is_file(), name
        licences = [*path.parents[0].glob("LICENSE*"), *path.parents[1].glob("LICENSE*")]
        licences += [*path.parents[2].glob("LICENSE*"), *path.parents[3].glob("LICENSE*")]
        assert licences, f"{name}: no licence text beside {path}"


@pytest.mark.parametrize(
    ("name", "end_hours", "low", "peak", "mean_slots"),
    [
        # Figures from the traces' READMEs (span, range or maximum, time-weighted mean).
        ("bamboo-p3", 11.37, 10, 32, 24.0),
        ("bamboo-g4dn", 10.77, 0, 24, 12.6),
        ("gcp-v100", 24.17, 30, 80, None),
        ("gcp-a100", 27.02, 17, 64, None),
        ("helios-vc6YE", 744.0, 0, 208, 20.3),
        ("helios-vchbv", 744.0, 0, 64, 37.7),
    ],
)
def test_bundled_traces_read_as_documented(
    name: str, end_hours: float, low: int, peak: int, mean_slots: float | None
) -> None:
    timeline = read_trace(trace_path(name))
    assert timeline.end / 3600 == pytest.approx(end_hours, abs=0.01)
    assert min(timeline.counts) == low and timeline.peak == peak
    if mean_slots is not None:
        assert mean(timeline) == pytest.approx(mean_slots, abs=0.06)


def test_the_gcp_echo_lines_are_dropped(tmp_path: Path) -> None:
    # Each observation printed at t, t+60 and t+120 s; the echo later than the next real one.
    path = tmp_path / "gcp.txt"
    path.write_text(
        "2021-12-10, 13:07:45, 80\n2021-12-10, 13:08:45, 80\n2021-12-10, 13:09:45, 80\n"
        "2021-12-10, 13:08:45, 70\n2021-12-10, 13:09:45, 70\n2021-12-10, 13:10:45, 70\n"
        "2021-12-10, 13:20:00, 75\n"
    )
    timeline = read_trace(path)
    assert list(zip(timeline.times, timeline.counts, strict=True)) == [(0, 80), (60, 70), (735, 75)]


def test_philly_idle_nodes_are_total_minus_active(tmp_path: Path) -> None:
    path = tmp_path / "philly.csv.gz"
    with gzip.open(path, "wt") as out:
        out.write("time,active,total\n2017-10-03 00:00:00,312,420\n2017-10-03 00:01:00,400,420\n")
    timeline = read_trace(path)
    assert timeline.counts == (108, 20) and timeline.end == 120


def test_load_churn_reads_a_named_trace_or_a_path(tmp_path: Path) -> None:
    churn = load_churn("trace:bamboo-g4dn,fit=60,seed=2", workers=2)
    assert isinstance(churn, TraceChurn) and churn.timeline.peak == 24
    path = tmp_path / "spot.csv"
    path.write_text("0,add,a\n60000,add,b\n120000,remove,a\n")
    by_path = load_churn(f"trace:{path},speed=60", workers=2)
    assert isinstance(by_path, TraceChurn) and by_path.timeline.counts == (1, 2, 1)
    assert load_churn("rate:mtbe=60", workers=2) == ChurnRate(60.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trace:no-such-trace", "'no-such-trace' is neither a bundled trace"),
        ("trace:bamboo-p3,start=12h", "churn start 43200 s is at or past the end"),
        ("trace:bamboo-p3,floor=3", "churn floor 3 exceeds the pool of 2 workers"),
    ],
)
def test_load_churn_refuses_what_cannot_run(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_churn(text, workers=2)


@pytest.mark.parametrize(
    ("name", "text", "where", "message"),
    [
        ("spot.csv", "0,add,a\n60000,add\n", "2: -", "2 fields, expected 3"),
        ("spot.csv", "0,add,a\n6e4,add,b\n", "2: time_ms", "'6e4' is not a whole number"),
        ("spot.csv", "0,add,a\n60000,grow,b\n", "2: event", "'grow' is not add or remove"),
        ("spot.csv", "0,add,a\n0,remove,b\n", "2: node_id", "'b' is removed but not up"),
        ("spot.csv", "0,add,a\n6,remove,a\n9,add,a\n", "3: node_id", "'a' was added before"),
        ("spot.csv", "60,add,a\n0,add,b\n", "2: time_ms", "earlier than the line before"),
        ("gcp.txt", "2021-12-10, 13:07:45, 80\n2021-12-10, 25:00:00, 3\n", "2: time", "not a"),
        ("gcp.txt", "2021-12-10, 13:07:45, 80\n2021-12-10, 13:09:45, -1\n", "2: count", "neg"),
        ("gcp.txt", "2021-12-10, 13:07:45, 8\n2021-12-10, 13:00:00, 7\n", "2: time", "not later"),
        ("v.csv", f"{HELIOS_HEADER}\n2020-05-01 00:00:00,1,1,0,1,1,0,8,8,0,x,1\n", "2: idle", "x"),
        ("v.csv", f"{HELIOS_HEADER}\n2020-05-01 00:00:00,1,1\n", "2: -", "3 fields where"),
        ("v.csv", "time,total_gpu_num\n2020-05-01 00:00:00,8\n", "1: -", "not a known trace"),
        ("p.csv", "time,active,total\n2017-10-03 00:00:00,9,8\n", "2: total", "fewer than"),
        ("empty.csv", "\n", "1: -", "the trace is empty"),
    ],
)
def test_malformed_traces_name_file_line_and_field(
    tmp_path: Path, name: str, text: str, where: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError, match=message) as caught:
        read_trace(path)
    assert str(caught.value).startswith(f"{path}:{where}"), str(caught.value)


def test_a_broken_gzip_file_is_a_trace_error(tmp_path: Path) -> None:
    path = tmp_path / "helios.csv.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(path)
