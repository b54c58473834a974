"""What the driver runs: a context, a batch function and its options, over an input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pervade.core.config import ConfigError, DispatchConfig
from pervade.core.context import ContextSpec


@dataclass(frozen=True, slots=True)
class Job:
    """`function(context_value, items, **options)` over every item, under `context`."""

    context: ContextSpec
    # An import path, or a callable that Dask pickles to the workers (a notebook's function).
    function: str | Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    name: str = "job"

    def __post_init__(self) -> None:
        try:
            json.dumps(dict(self.options), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"job options must be JSON values: {exc}") from None

    @property
    def function_name(self) -> str:
        if isinstance(self.function, str):
            return self.function
        module = getattr(self.function, "__module__", "?")
        return f"{module}:{getattr(self.function, '__qualname__', repr(self.function))}"

    @property
    def worker_modules(self) -> tuple[str, ...]:
        """Modules every worker imports for this job: its context loader's and function's."""
        paths = (self.context.loader, self.function_name)
        return tuple(dict.fromkeys(path.partition(":")[0] for path in paths))

    def fingerprint(self, input_name: str) -> str:
        """Identity of the job for its journal: a rerun must be the same job."""
        canonical = json.dumps(
            {
                "context": self.context.id,
                "function": self.function_name,
                "options": dict(self.options),
                "input": input_name,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
