"""Helper modules for tests, importable as ``tests.helpers`` (see tests/conftest.py)."""
