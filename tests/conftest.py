"""Shared test setup.

The repository root goes on sys.path so that helper modules import as ``tests.helpers...``
however pytest is started (``python -m pytest`` adds the working directory, a bare
``pytest`` does not), and so that context loaders named by import path resolve.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A local cluster of two single-threaded worker processes, shared by a module's tests."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2)
        yield c
