"""pervade: throughput LLM batch inference on GPUs that come and go, with pervasive
context management (a model loaded once per worker, kept warm, reused by every task)."""

from pervade.api import Result, context, llm, map
from pervade.core.config import ConfigError, DispatchConfig
from pervade.core.context import ContextSpec
from pervade.core.items import ContextPoisoned, Item, ItemError, TaskOutputs

__version__ = "0.1.0"

__all__ = [
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
]
