"""API server failures as a small hierarchy, so reconcile can tell permanent from temporary.

Every error carries what we tried (`verb` in RBAC terms, and the object) next to the server's own
message, because "forbidden" alone does not tell an operator admin which rule to add.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Cause:
    """One field-level reason the server gave (metav1.StatusCause)."""

    field: str
    reason: str
    message: str


class KubeError(Exception):
    """Any failed API call. Unknown failures are temporary: retrying is the safe default."""

    temporary: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str = "",
        verb: str = "",
        resource: str = "",
        group: str = "",
        causes: tuple[Cause, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        """HTTP status code; 0 when the server was never reached."""
        self.reason = reason
        """The server's machine-readable reason (metav1.StatusReason), e.g. AlreadyExists."""
        self.verb = verb
        """The RBAC verb of the failed call: get, list, create, patch, delete."""
        self.resource = resource
        """The resource as a Role rule names it: `secrets`, `mailboxes/status`."""
        self.group = group
        """The resource's API group ("" for core)."""
        self.causes = causes


class NotFound(KubeError):
    """The object (or the kind itself, e.g. cert-manager not installed) does not exist.
    Temporary: a dependency may appear later."""


class Conflict(KubeError):
    """Someone else changed the object first (stale resourceVersion, or an SSA field conflict)."""


class AlreadyExists(Conflict):
    """A create found the name taken."""


class Forbidden(KubeError):
    """RBAC (or admission) refused the call. Permanent until an admin changes the rules, so it
    should surface in status rather than be retried hot."""

    temporary: ClassVar[bool] = False


class Invalid(KubeError):
    """The server rejected the object's content (HTTP 422, or 400 for a malformed request).
    Retrying the same object cannot succeed."""

    temporary: ClassVar[bool] = False


class Unavailable(KubeError):
    """The server could not be reached, timed out, throttled us (429) or failed (5xx)."""


class Expired(KubeError):
    """410 Gone: a watch (or list continuation) asked for a resourceVersion the server no
    longer keeps. Start again from the current state."""


_DENIED = re.compile(
    r'cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"'
)


def _parse_status(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body) if body else {}
    except ValueError:
        return {"message": body.decode("utf-8", "replace").strip()}
    return decoded if isinstance(decoded, dict) else {}


def rbac_target(resource: str, group: str) -> str:
    """How a person writes the rule to add: `"secrets" in the core API group`."""
    where = f"API group {group!r}" if group else "the core API group"
    return f"resource {resource!r} in {where}"


def error_from_response(
    status: int, body: bytes, *, verb: str, resource: str, group: str, what: str
) -> KubeError:
    """The error for a non-2xx answer. `what` names the object for people ("secret ns/name")."""
    parsed = _parse_status(body)
    reason = str(parsed.get("reason") or "")
    server_message = str(parsed.get("message") or f"HTTP {status}")
    details = parsed.get("details")
    raw_causes = details.get("causes", []) if isinstance(details, dict) else []
    causes = tuple(
        Cause(
            field=str(cause.get("field", "")),
            reason=str(cause.get("reason", "")),
            message=str(cause.get("message", "")),
        )
        for cause in raw_causes
        if isinstance(cause, dict)
    )
    kwargs: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "verb": verb,
        "resource": resource,
        "group": group,
        "causes": causes,
    }
    prefix = f"{verb} {what}"
    if status == 403:
        # The server names the verb it actually checked, which can differ from the call's: a
        # server-side apply (patch) of a missing object is authorised as create too.
        denied = _DENIED.search(server_message)
        if denied is not None:
            kwargs.update(denied.groupdict())
            verb, resource, group = denied["verb"], denied["resource"], denied["group"]
    if status == 404:
        return NotFound(f"{prefix}: not found ({server_message})", **kwargs)
    if status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
        return cls(f"{prefix}: conflict: {server_message}", **kwargs)
    if status == 403:
        return Forbidden(
            f"{prefix}: forbidden: needs RBAC verb {verb!r} on {rbac_target(resource, group)} "
            f"({server_message})",
            **kwargs,
        )
    if status == 410:
        return Expired(f"{prefix}: expired: {server_message}", **kwargs)
    if status in (400, 422):
        return Invalid(f"{prefix}: invalid: {server_message}", **kwargs)
    if status == 429 or status >= 500:
        return Unavailable(f"{prefix}: server unavailable: {server_message}", **kwargs)
    return KubeError(f"{prefix}: HTTP {status}: {server_message}", **kwargs)
