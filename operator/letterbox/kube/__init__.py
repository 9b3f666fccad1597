"""The only code that talks to the Kubernetes API server.

`Kube` (sync, thread-safe) and `AsyncKube` (the same calls, awaitable) wrap the official client:
server-side apply of any object, get/list/delete, status writes that skip unchanged statuses,
events with series de-duplication, and create-only generated Secrets. Failures are `KubeError`s
whose class says whether retrying can help (`temporary`).
"""

from letterbox.kube.aio import AsyncKube
from letterbox.kube.client import (
    FIELD_MANAGER,
    EnsuredSecret,
    Kube,
    Object,
    Objects,
    Propagation,
    StatusWrite,
    WatchEvent,
    WatchStream,
    owner_reference,
)
from letterbox.kube.discovery import ResourceInfo
from letterbox.kube.errors import (
    AlreadyExists,
    Cause,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unavailable,
)
from letterbox.kube.events import REPORTING_CONTROLLER, EventType

__all__ = [
    "FIELD_MANAGER",
    "REPORTING_CONTROLLER",
    "AlreadyExists",
    "AsyncKube",
    "Cause",
    "Conflict",
    "EnsuredSecret",
    "EventType",
    "Expired",
    "Forbidden",
    "Invalid",
    "Kube",
    "KubeError",
    "NotFound",
    "Object",
    "Objects",
    "Propagation",
    "ResourceInfo",
    "StatusWrite",
    "Unavailable",
    "WatchEvent",
    "WatchStream",
    "owner_reference",
]
