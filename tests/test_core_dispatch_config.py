"""Dispatch configuration checks and context identity."""

from __future__ import annotations

import pytest

from pervade.core import (
    Artifact,
    ContextSpec,
    DispatchConfig,
)
from pervade.core.config import ConfigError

# -- configuration and context identity --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_in_flight", 0),
        ("min_task_items", -1),
        ("max_task_items", 2.5),
        ("tasks_per_slot", True),
        ("max_failures", "3"),
        ("max_load_failures", 0),
    ],
)
def test_dispatch_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"dispatch\.{field} must be a positive integer"):
        DispatchConfig(**{field: value})  # type: ignore[arg-type]


def test_dispatch_config_rejects_min_above_max() -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.min_task_items \(9\).*max_task_items \(8\)"):
        DispatchConfig(min_task_items=9, max_task_items=8)
    assert DispatchConfig(min_task_items=8, max_task_items=8).max_task_items == 8


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def spec(**overrides: object) -> ContextSpec:
    values: dict[str, object] = {
        "loader": "pkg.mod:build",
        "args": {"dtype": "float32", "batch": 16},
        "artifacts": (Artifact("model", "/shared/a/model", "sha-1"),),
        "label": "tiny",
    }
    values.update(overrides)
    return ContextSpec(**values)  # type: ignore[arg-type]


def test_context_id_is_stable() -> None:
    first = spec()
    assert first.id == spec().id
    assert len(first.id) == 64 and int(first.id, 16) >= 0
    assert first.short_id == first.id[:12]
    # Argument order does not matter: the identity is canonical JSON.
    assert spec(args={"batch": 16, "dtype": "float32"}).id == first.id
    # A pinned value: the id must not drift between processes or releases, or workers
    # would stop recognising contexts they already hold warm.
    assert first.id == "d7d2e2745ed14a4664cf71c957925ae5cab259026d77e33bc3cb3b2dddd41a1b"


def test_context_id_depends_on_loader_args_and_digests_only() -> None:
    base = spec().id
    assert spec(loader="pkg.mod:other").id != base
    assert spec(args={"dtype": "bfloat16", "batch": 16}).id != base
    assert spec(artifacts=(Artifact("model", "/shared/a/model", "sha-2"),)).id != base
    assert spec(artifacts=(Artifact("weights", "/shared/a/model", "sha-1"),)).id != base
    # Not part of the identity: where the artifact lives, and the human label.
    assert spec(artifacts=(Artifact("model", "/other/path", "sha-1"),)).id == base
    assert spec(label="another name").id == base


def test_context_artifact_order_does_not_change_id() -> None:
    a, b = Artifact("model", "/m", "d1"), Artifact("tok", "/t", "d2")
    assert spec(artifacts=(a, b)).id == spec(artifacts=(b, a)).id


@pytest.mark.parametrize("loader", ["pkg.mod", ":build", "pkg.mod:", "", "build"])
def test_context_rejects_bad_loader(loader: str) -> None:
    with pytest.raises(ConfigError, match=r"context\.loader must look like"):
        spec(loader=loader)


def test_context_rejects_non_json_args() -> None:
    with pytest.raises(ConfigError, match=r"context\.args must be JSON values"):
        spec(args={"path": object()})
    with pytest.raises(ConfigError, match=r"context\.args must be JSON values"):
        spec(args={"ids": {1, 2}})


def test_context_rejects_clashing_names() -> None:
    with pytest.raises(ConfigError, match="model"):
        spec(args={"model": "x"})
    with pytest.raises(ConfigError, match="model"):
        spec(artifacts=(Artifact("model", "/a", "1"), Artifact("model", "/b", "2")))


def test_display_name_uses_label_or_loader() -> None:
    assert spec().display_name == "tiny"
    unnamed = spec(label="")
    assert unnamed.display_name == f"pkg.mod:build [{unnamed.short_id}]"
