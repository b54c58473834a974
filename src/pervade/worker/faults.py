"""What an exception from a batch function says about the worker that raised it."""

from __future__ import annotations

import gc
import sys
from enum import Enum

from pervade.core.items import ContextPoisoned


class Fault(Enum):
    ITEMS = "items"  # something about these items: find the one to blame; all else is fine
    MEMORY = "memory"  # the device ran out of memory: a smaller batch may fit
    CONTEXT = "context"  # the context is broken: build it again before the next task
    PROCESS = "process"  # the device is unusable in this process: start a new process


# Text of errors after which CUDA refuses every later call in the same process (an illegal
# address, a device-side assert, a launch failure, ...): only a new process recovers.
_STICKY = ("cuda error", "cudaerrorillegaladdress", "device-side assert", "cublas_status_")


def classify(exc: BaseException) -> Fault:
    if isinstance(exc, ContextPoisoned):
        return Fault.CONTEXT
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or _is_torch_oom(exc) or "out of memory" in text:
        return Fault.MEMORY
    if type(exc).__name__ == "AcceleratorError" or any(mark in text for mark in _STICKY):
        return Fault.PROCESS
    return Fault.ITEMS


def _is_torch_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    oom = getattr(torch, "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def release_memory() -> None:
    """Give back what a failed batch held, so the next one starts from a clean device."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
