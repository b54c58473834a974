"""Shared test setup.

The repository root goes on sys.path so that helper modules import as ``tests.helpers...``
however pytest is started (``python -m pytest`` adds the working directory, a bare
``pytest`` does not), and so that context loaders named by import path resolve.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
