"""pervade's public API is what `pervade.__all__` names: small, deliberate and importable.
A name added or removed here is a change to what users may rely on."""

from __future__ import annotations

import importlib.metadata

import pervade

PUBLIC = {
    "ConfigError",
    "ContextPoisoned",
    "ContextSpec",
    "DispatchConfig",
    "Item",
    "ItemError",
    "Result",
    "TaskOutputs",
    "__version__",
    "context",
    "llm",
    "map",
}


def test_the_public_api_is_exactly_the_names_in_all() -> None:
    assert set(pervade.__all__) == PUBLIC
    assert len(pervade.__all__) == len(PUBLIC), "a name is listed twice"
    for name in pervade.__all__:
        assert hasattr(pervade, name), f"pervade.__all__ names {name}, which is not there"


def test_every_public_name_without_an_underscore_is_listed() -> None:
    modules = {"api", "apps", "cli", "core", "engines", "journal", "reports", "runtime"}
    modules |= {"sim", "storage", "traces", "worker"}
    exposed = {
        name
        for name in vars(pervade)
        if not name.startswith("_") and name not in modules  # subpackages, once imported
    }
    assert exposed <= set(pervade.__all__), exposed - set(pervade.__all__)


def test_the_version_is_the_installed_one() -> None:
    assert pervade.__version__ == importlib.metadata.version("pervade")
