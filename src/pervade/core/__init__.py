"""Sans-I/O policy of pervade: events in, decisions out, `now` passed in.

Nothing here reads a clock, touches a file or a socket, or imports dask or torch, so the
simulator and the Dask runtime drive exactly the same policy.
"""

from pervade.core.config import DispatchConfig
from pervade.core.context import Artifact, ContextSpec
from pervade.core.decisions import (
    Abort,
    CancelTask,
    Decision,
    FailItems,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    ScaleAdvice,
    StageContext,
)
from pervade.core.dispatcher import Dispatcher
from pervade.core.events import (
    ContextStateChanged,
    Event,
    ItemsSubmitted,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    WorkerClassified,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.items import ContextPoisoned, Item, ItemError, ItemRef, TaskOutputs
from pervade.core.states import ContextState

__all__ = [
    "Abort",
    "Artifact",
    "CancelTask",
    "ContextPoisoned",
    "ContextSpec",
    "ContextState",
    "ContextStateChanged",
    "Decision",
    "DispatchConfig",
    "Dispatcher",
    "Event",
    "FailItems",
    "Item",
    "ItemError",
    "ItemRef",
    "ItemsSubmitted",
    "LoadContext",
    "RequeueItems",
    "RestartWorker",
    "RunTask",
    "ScaleAdvice",
    "StageContext",
    "TaskFailed",
    "TaskFinished",
    "TaskOutputs",
    "TaskProgressed",
    "WorkerClassified",
    "WorkerDraining",
    "WorkerJoined",
    "WorkerLeft",
]
