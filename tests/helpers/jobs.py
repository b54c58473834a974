"""Job files and inputs for CLI tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def generic_job(folder: Path, items: int, delay: float = 0.0, workers: int = 2) -> Path:
    """A job file whose context and batch function live in tests.helpers.workloads."""
    write_jsonl(folder / "items.jsonl", [{"id": f"g{n:04d}", "n": n} for n in range(items)])
    job = folder / "job.toml"
    job.write_text(
        f"""
[job]
function = "tests.helpers.workloads:describe"
input = "items.jsonl"
output = "out/results.jsonl"

[context]
loader = "tests.helpers.workloads:process_context"
args = {{ tag = "cli" }}

[options]
delay = {delay}

[cluster]
workers = {workers}

[dispatch]
min_task_items = 4
max_task_items = 4
"""
    )
    return job


def pervade_process(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """`pervade` in its own process (and session, so a test can kill it and its workers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pervade.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
