"""What the driver runs: a context, a batch function and its options, over an input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pervade.core.config import ConfigError, DispatchConfig
from pervade.core.context import ContextSpec


@dataclass(frozen=True, slots=True)
class Job:
    """`function(context_value, items, **options)` over every item, under `context`."""

    context: ContextSpec
    function: str
    options: Mapping[str, Any] = field(default_factory=dict)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    name: str = "job"

    def __post_init__(self) -> None:
        try:
            json.dumps(dict(self.options), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"job options must be JSON values: {exc}") from None

    def fingerprint(self, input_name: str) -> str:
        """Identity of the job for its journal: a rerun must be the same job."""
        canonical = json.dumps(
            {
                "context": self.context.id,
                "function": self.function,
                "options": dict(self.options),
                "input": input_name,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
