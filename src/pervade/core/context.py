"""The declaration of a context and its content-addressed identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pervade.core.config import ConfigError


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file or folder a context needs.

    `uri` says where the origin copy is (a path on a shared filesystem, typically);
    `digest` names its content, so two paths holding the same bytes are one artifact.
    """

    name: str
    uri: str
    digest: str


@dataclass(frozen=True, slots=True)
class ContextSpec:
    """A recipe for expensive state: `loader(**args, **{artifact.name: local_path})`.

    `loader` is the import path of a function, ``"package.module:function"``. The identity
    of a context is a hash of the loader, its arguments and its artifacts' digests (not their
    paths), so every job that asks for the same model with the same settings shares the same
    warm context on a worker.
    """

    loader: str
    args: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    label: str = ""  # a human name for progress displays; not part of the identity

    def __post_init__(self) -> None:
        module, sep, attr = self.loader.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(
                f"context.loader must look like 'package.module:function', got {self.loader!r}"
            )
        try:
            json.dumps(dict(self.args), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"context.args must be JSON values: {exc}") from None
        names = [a.name for a in self.artifacts]
        clash = {n for n in names if names.count(n) > 1} | (set(names) & set(self.args))
        if clash:
            raise ConfigError(
                f"context artifact names must be unique and differ from args: {sorted(clash)}"
            )

    @property
    def id(self) -> str:
        canonical = json.dumps(
            {
                "loader": self.loader,
                "args": dict(self.args),
                "artifacts": sorted((a.name, a.digest) for a in self.artifacts),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def display_name(self) -> str:
        return self.label or f"{self.loader} [{self.short_id}]"
