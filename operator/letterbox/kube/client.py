"""`Kube`: every API call the operator makes, as plain JSON over urllib3.

The operator renders objects as dicts, CRDs have no generated models, and skipping any model
(de)serialisation keeps fields a client does not know intact; `letterbox.kube.connection` finds
the server and the credentials. The calls are synchronous; asyncio code uses
`letterbox.kube.aio`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import urllib3
from pydantic import BaseModel

from letterbox.api.meta import API_VERSION, Resource, Status
from letterbox.kube.connection import KubeconfigError, Transport
from letterbox.kube.connection import connect as connect_api_server
from letterbox.kube.discovery import Discovery, ResourceInfo
from letterbox.kube.errors import AlreadyExists, Conflict, Invalid, NotFound, Unavailable
from letterbox.kube.errors import error_from_response as _error_from_response
from letterbox.kube.events import (
    EVENT_API_VERSION,
    EventType,
    Series,
    SeriesCache,
    event_key,
    new_event,
    object_reference,
    series_patch,
)
from letterbox.kube.patch import merge_patch, same_status, status_json

FIELD_MANAGER: Final = "letterbox"
JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
LIST_PAGE: Final = 500
# Keep-alive connections to the API server, at least as many as calls in flight (AsyncKube's
# threads); the client's default, CPUs * 5, is 10 on two cores.
CONNECTIONS: Final = 16
# Server-side length of one watch request (it is resumed from its last resourceVersion), the
# read timeout beyond it, and the most read from the stream at once.
WATCH_SECONDS: Final = 300
WATCH_GRACE: Final = 90.0
WATCH_READ: Final = 1 << 16
# Optimistic-concurrency retries for read-compare-write calls before giving up with Conflict.
WRITE_ATTEMPTS: Final = 3

# Fixed built-ins: no discovery round trip needed to find them.
SECRETS: Final = ResourceInfo("v1", "Secret", "secrets", namespaced=True)
EVENTS: Final = ResourceInfo(EVENT_API_VERSION, "Event", "events", namespaced=True)

T = TypeVar("T")
Object = dict[str, Any]
# Aliases keep annotations inside `Kube` clear of its `list` method, which shadows the builtin.
Objects = list[Object]
SecretData = dict[str, bytes]


class Propagation(StrEnum):
    """What happens to the dependents of a deleted object."""

    BACKGROUND = "Background"
    FOREGROUND = "Foreground"
    ORPHAN = "Orphan"


@dataclass(frozen=True)
class StatusWrite:
    """The result of `patch_status`: whether a write happened, and the object as it now is."""

    written: bool
    object: Object = field(repr=False)


@dataclass(frozen=True)
class EnsuredSecret:
    """The result of `ensure_secret`: the values stored in the cluster, which are the ones to
    use (they may predate this call). `repr` never shows them."""

    created: bool
    updated: bool
    data: SecretData = field(repr=False)


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch: ADDED, MODIFIED or DELETED and the object (with apiVersion and
    kind, as the server sends them in events)."""

    type: str
    object: Object = field(repr=False)


class WatchStream:
    """An open watch request: iterating yields the events that arrived together (one HTTP
    chunk), so a consumer can hand them on in batches. Bookmarks only advance
    `resource_version`. An ERROR event raises its `KubeError` (`Expired` when the version is
    too old). `close` may be called from any thread and ends the iteration."""

    def __init__(
        self, response: Any, resource_version: str, *, what: str, resource: str, group: str
    ) -> None:
        self._response = response
        self.resource_version = resource_version
        self._what, self._resource, self._group = what, resource, group
        self._closed = self._started = self._finished = False
        self._batches = self._read()

    def close(self) -> None:
        self._closed = True
        if self._finished:
            return
        # shutdown() wakes a read blocked in another thread; the iterator then drops the
        # connection (half read, it must not go back to the pool).
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            self._response.shutdown()
        if not self._started:
            self._response.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[list[WatchEvent]]:
        # One generator per stream: a loop that stops early can be taken up again.
        return self._batches

    def _read(self) -> Iterator[list[WatchEvent]]:
        self._started = True
        pending = b""
        complete = False
        try:
            for chunk in self._response.stream(WATCH_READ, decode_content=True):
                pending += chunk
                if b"\n" not in chunk:
                    continue
                *lines, pending = pending.split(b"\n")
                batch = [event for event in map(self._event, lines) if event is not None]
                if batch:
                    yield batch
            complete = True
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._closed:
                return
            raise Unavailable(
                f"watch {self._what}: the stream broke: {exc}",
                verb="watch",
                resource=self._resource,
                group=self._group,
            ) from exc
        finally:
            self._finished = True
            if complete:
                self._response.release_conn()
            else:
                self._response.close()

    def _event(self, line: bytes) -> WatchEvent | None:
        if not line.strip():
            return None
        event = json.loads(line)
        type_, obj = str(event.get("type") or ""), event.get("object") or {}
        if type_ == "ERROR":
            raise _error_from_response(
                int(obj.get("code") or 500),
                json.dumps(obj).encode(),
                verb="watch",
                resource=self._resource,
                group=self._group,
                what=self._what,
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        return None if type_ == "BOOKMARK" else WatchEvent(type_, obj)


def owner_reference(owner: Resource | Mapping[str, Any], *, controller: bool = True) -> Object:
    """An ownerReference to a live object, so the garbage collector deletes what we made for it.

    blockOwnerDeletion matches controller-runtime: foreground deletion of the owner waits for
    these dependents. (Clusters running the OwnerReferencesPermissionEnforcement admission
    plugin then also require `update` on `<owner plural>/finalizers`.)
    """
    api_version: str | None
    kind: str | None
    name: str | None
    uid: str | None
    if isinstance(owner, Resource):
        api_version, kind = owner.api_version, owner.kind
        name, uid = owner.metadata.name, owner.metadata.uid
    else:
        metadata = owner.get("metadata") or {}
        api_version, kind = owner.get("apiVersion"), owner.get("kind")
        name, uid = metadata.get("name"), metadata.get("uid")
    if not (api_version and kind and name and uid):
        raise ValueError("an owner needs apiVersion, kind, metadata.name and metadata.uid")
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _decode_data(data: Mapping[str, str] | None) -> SecretData:
    return {key: base64.b64decode(value) for key, value in (data or {}).items()}


def _encode_data(data: Mapping[str, str | bytes]) -> dict[str, str]:
    return {
        key: base64.b64encode(value.encode() if isinstance(value, str) else value).decode()
        for key, value in data.items()
    }


def _for_apply(obj: Mapping[str, Any]) -> Object:
    """`obj` as we send it to server-side apply.

    A Secret's `stringData` is folded into `data` here: the server converts it only after
    recording field ownership, so under SSA a key dropped from `stringData` would never be
    removed from `data`. Owning `data` keys directly keeps "the rendered object is the whole of
    our intent" true for Secrets too. (`stringData` wins over `data`, as on the server.)

    Empty `metadata.labels` / `metadata.annotations` maps are dropped: the server stores them as
    absent, so applying `{}` (as a model dump does) would look like a change on every apply and
    bump resourceVersion forever. Dropping them changes nothing else: keys we owned before are
    removed either way.
    """
    body = dict(obj)
    metadata = dict(body.get("metadata") or {})
    for empty in ("labels", "annotations"):
        if empty in metadata and not metadata[empty]:
            del metadata[empty]
    body["metadata"] = metadata
    if body.get("apiVersion") == "v1" and body.get("kind") == "Secret" and "stringData" in body:
        string_data = body.pop("stringData") or {}
        body["data"] = {**(body.get("data") or {}), **_encode_data(string_data)}
    return body


def _selector(labels: str | Mapping[str, str] | None) -> str | None:
    if labels is None or isinstance(labels, str):
        return labels
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _described(info: ResourceInfo, namespace: str | None, name: str | None) -> str:
    """How messages name an object: `Secret ns/name`, `Mailbox ns/*` for a collection."""
    target = name if name is not None else "*"
    return f"{info.kind} {namespace}/{target}" if namespace else f"{info.kind} {target}"


def _default_instance() -> str:
    # The pod name (downward API) tells replicas apart in events; hostname equals it in a pod.
    return os.environ.get("POD_NAME") or socket.gethostname()


class Kube:
    """The operator's only door to the API server. Thread-safe; share one per process."""

    def __init__(
        self,
        transport: Transport,
        *,
        field_manager: str = FIELD_MANAGER,
        timeout: float = 30.0,
        instance: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.transport = transport
        self.field_manager = field_manager
        self.instance = instance or _default_instance()
        # (connect, read): a dead API server is noticed in seconds, a slow list is not cut off.
        self._timeout = (min(5.0, timeout), timeout)
        self._clock = clock
        self._discovery = Discovery(self._discover)
        self._series = SeriesCache()

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        field_manager: str = FIELD_MANAGER,
        timeout: float = 30.0,
        instance: str | None = None,
    ) -> Kube:
        """A client for the pod's ServiceAccount when running in a cluster (and no kubeconfig is
        given), else for `kubeconfig` (default: $KUBECONFIG, then ~/.kube/config). Raises
        KubeconfigError saying what is wrong with either."""
        transport = Transport(
            connect_api_server(kubeconfig, context), connections=CONNECTIONS, user_agent="letterbox"
        )
        return cls(transport, field_manager=field_manager, timeout=timeout, instance=instance)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------

    def _call(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        what: str,
        resource: str,
        group: str,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        """One HTTP call; JSON in, JSON out, failures as `KubeError`s naming `verb` on
        `resource` so a Forbidden says which Role rule is missing."""
        response = self._request(
            verb,
            method,
            path,
            what=what,
            resource=resource,
            group=group,
            query=query,
            body=body,
            content_type=content_type,
        )
        raw: bytes = response.data
        return json.loads(raw) if raw else None

    def _request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        what: str,
        resource: str,
        group: str,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: tuple[float, float] | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; the response when it succeeded (its body read unless `stream`)."""
        params = {key: value for key, value in (query or {}).items() if value is not None}
        if method in ("POST", "PATCH", "PUT"):
            # Every write is recorded under one manager in managedFields (SSA sets its own).
            params.setdefault("fieldManager", self.field_manager)
        if params:
            path = f"{path}?{urlencode(params)}"
        try:
            response = self.transport.request(
                method,
                path,
                headers={"Accept": JSON, "Content-Type": content_type},
                body=None if body is None else json.dumps(body).encode(),
                timeout=timeout or self._timeout,
                stream=stream,
            )
        except (urllib3.exceptions.HTTPError, OSError, KubeconfigError) as exc:
            raise Unavailable(
                f"{verb} {what}: cannot reach the API server: {exc}",
                verb=verb,
                resource=resource,
                group=group,
            ) from exc
        if not 200 <= response.status < 300:
            try:
                raw = response.data if not stream else response.read()
            except (urllib3.exceptions.HTTPError, OSError):
                raw = b""
            finally:
                if stream:
                    response.release_conn()
            raise _error_from_response(
                response.status, raw, verb=verb, resource=resource, group=group, what=what
            )
        return response

    def _object_call(
        self,
        verb: str,
        method: str,
        info: ResourceInfo,
        namespace: str | None,
        name: str | None = None,
        *,
        subresource: str = "",
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        what = _described(info, namespace, name) + (f" {subresource}" if subresource else "")
        return self._call(
            verb,
            method,
            info.path(namespace, name, subresource),
            what=what,
            resource=f"{info.plural}/{subresource}" if subresource else info.plural,
            group=info.group,
            query=query,
            body=body,
            content_type=content_type,
        )

    def _discover(self, path: str) -> Any:
        return self._call("get", "GET", path, what=f"discovery {path}", resource="", group="")

    def resource(self, api_version: str, kind: str) -> ResourceInfo:
        """The REST resource serving `kind` (cached discovery)."""
        return self._discovery.resource(api_version, kind)

    def _info_of(self, obj: Mapping[str, Any]) -> tuple[ResourceInfo, str | None, str]:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
            raise ValueError("an object needs apiVersion, kind and metadata.name")
        info = self.resource(api_version, kind)
        namespace = metadata.get("namespace") if info.namespaced else None
        if info.namespaced and not namespace:
            # Never fall back to a default namespace: an object landing in the wrong namespace
            # is worse than a loud error in the renderer's test.
            raise ValueError(f"{kind} {name} is namespaced but has no metadata.namespace")
        return info, namespace, name

    # --- generic objects --------------------------------------------------------------------

    def apply(
        self, obj: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> Object:
        """Server-side apply `obj` (create or update) and return the live object.

        Fields the object leaves out are not touched, except ones this field manager set
        before, which are removed: the rendered object is the whole of our intent. `force` takes
        over fields another manager (a `kubectl edit`) changed, as a controller must.
        """
        info, namespace, name = self._info_of(obj)
        live: Object = self._object_call(
            "patch",
            "PATCH",
            info,
            namespace,
            name,
            query={
                "fieldManager": field_manager or self.field_manager,
                "force": "true" if force else None,
            },
            body=_for_apply(obj),
            content_type=APPLY_PATCH,
        )
        return live

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
    ) -> Object:
        """A JSON merge patch of an object (e.g. its finalizers); put metadata.resourceVersion
        in `patch` to make it conditional (Conflict if the object changed since)."""
        info = self.resource(api_version, kind)
        live: Object = self._object_call(
            "patch", "PATCH", info, namespace, name, body=dict(patch), content_type=MERGE_PATCH
        )
        return live

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Object:
        info = self.resource(api_version, kind)
        live: Object = self._object_call("get", "GET", info, namespace, name)
        return live

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = LIST_PAGE,
    ) -> Objects:
        """Every object of `kind` (in `namespace`, or all namespaces) matching the selector.

        Pages through the result so one call never asks the server for 10,000 objects at once.
        Items get their apiVersion and kind back (list responses omit them), so they can be
        passed to `apply`, `delete` or `emit_event` as they are.
        """
        info = self.resource(api_version, kind)
        query: dict[str, str | None] = {
            "labelSelector": _selector(label_selector),
            "limit": str(page_size),
        }
        items: Objects = []
        while True:
            page = self._object_call("list", "GET", info, namespace, query=query)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query["continue"] = token

    def list_each(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        transform: Callable[[Object], T],
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = LIST_PAGE,
    ) -> tuple[T, ...]:
        """`transform` of every object `list` would return, applied page by page so that only
        one page of raw objects is held at a time."""
        info = self.resource(api_version, kind)
        query: dict[str, str | None] = {
            "labelSelector": _selector(label_selector),
            "limit": str(page_size),
        }
        results = []
        while True:
            page = self._object_call("list", "GET", info, namespace, query=query)
            for item in page.pop("items", None) or []:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                results.append(transform(item))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return tuple(results)
            query["continue"] = token

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = WATCH_SECONDS,
    ) -> WatchStream:
        """Open a watch of `kind` (in `namespace`, or all namespaces). Without
        `resource_version` the server first sends the current objects as ADDED events (one
        request instead of a listing and a watch); with one, the changes after it. The server
        ends the stream after `timeout_seconds`; resume from `WatchStream.resource_version`."""
        info = self.resource(api_version, kind)
        what = _described(info, namespace, None)
        response = self._request(
            "watch",
            "GET",
            info.path(namespace, None, ""),
            what=what,
            resource=info.plural,
            group=info.group,
            query={
                "watch": "true",
                "allowWatchBookmarks": "true",
                "resourceVersion": resource_version or None,
                "timeoutSeconds": str(timeout_seconds),
            },
            # Bookmarks come about once a minute, so a read that waits much longer than the
            # server-side timeout means the connection is gone.
            timeout=(self._timeout[0], timeout_seconds + WATCH_GRACE),
            stream=True,
        )
        return WatchStream(
            response,
            resource_version or "",
            what=what,
            resource=info.plural,
            group=info.group,
        )

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: Propagation = Propagation.BACKGROUND,
        missing_ok: bool = True,
    ) -> bool:
        """Delete an object; True if this call deleted it (or started its deletion), False if it
        was already gone and `missing_ok`."""
        info = self.resource(api_version, kind)
        try:
            self._object_call(
                "delete",
                "DELETE",
                info,
                namespace,
                name,
                query={"propagationPolicy": str(propagation)},
            )
        except NotFound:
            if missing_ok:
                return False
            raise
        return True

    # --- status -----------------------------------------------------------------------------

    def patch_status(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        status: Status | Mapping[str, Any],
        *,
        api_version: str = API_VERSION,
        only_if_changed: bool = True,
        observed: Mapping[str, Any] | None = None,
    ) -> StatusWrite:
        """Write `status` (the whole status) through the /status subresource.

        When the stored status already says the same (compared as normalised JSON), nothing is
        written: an unchanged status must not bump resourceVersion, or every write would wake
        every watcher (kopf included) for nothing. `observed` is the object as the caller last
        saw it (e.g. kopf's body) and saves the read; if it is stale the server answers
        Conflict and we re-read.

        The write is a merge patch of the difference, guarded by the resourceVersion we compared
        against, so a concurrent change is never silently overwritten. Raises NotFound if the
        object is gone (nothing left to report on), Conflict after `WRITE_ATTEMPTS` lost races.
        """
        info = self.resource(api_version, kind)
        if "status" not in info.subresources:
            raise Invalid(
                f"{kind} ({info.rbac_name}) has no status subresource; its CRD must enable it",
                verb="patch",
                resource=f"{info.plural}/status",
                group=info.group,
            )
        desired = status_json(status)
        live: Mapping[str, Any] | None = observed
        for _ in range(WRITE_ATTEMPTS):
            if live is None:
                live = self._object_call("get", "GET", info, namespace, name)
            stored = live.get("status") or {}
            if only_if_changed and same_status(stored, status):
                return StatusWrite(written=False, object=dict(live))
            patch = {
                "metadata": {
                    "resourceVersion": (live.get("metadata") or {}).get("resourceVersion")
                },
                "status": merge_patch(stored, desired),
            }
            try:
                written: Object = self._object_call(
                    "patch",
                    "PATCH",
                    info,
                    namespace,
                    name,
                    subresource="status",
                    body=patch,
                    content_type=MERGE_PATCH,
                )
            except Conflict:
                live = None  # someone wrote in between: compare against the fresh object
                continue
            return StatusWrite(written=True, object=written)
        raise Conflict(
            f"patch {_described(info, namespace, name)} status: the object changed on each of "
            f"{WRITE_ATTEMPTS} attempts; retry later",
            status=409,
            verb="patch",
            resource=f"{info.plural}/status",
            group=info.group,
        )

    # --- events -----------------------------------------------------------------------------

    def emit_event(
        self,
        involved_object: Resource | Mapping[str, Any],
        type: EventType | str,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
        related: Mapping[str, Any] | None = None,
    ) -> Object:
        """Record an events.k8s.io/v1 Event about `involved_object` (shown by `kubectl
        describe`). An identical event within the series window increments the previous one's
        `series.count` instead of creating another object. Events are informative: callers
        should log a failure here and carry on, not fail the reconcile."""
        regarding = object_reference(_as_mapping(involved_object))
        event_type = EventType(type)
        key = event_key(regarding, event_type, reason, message, action)
        now = self._clock()
        previous = self._series.recent(key, now)
        if previous is not None:
            count = previous.count + 1
            try:
                event: Object = self._object_call(
                    "patch",
                    "PATCH",
                    EVENTS,
                    previous.namespace,
                    previous.name,
                    body=series_patch(count, now),
                    content_type=MERGE_PATCH,
                )
            except NotFound:
                # Events expire (1 h by default): start a new one.
                self._series.forget(key)
            else:
                self._series.record(key, Series(previous.namespace, previous.name, count, now))
                return event
        body = new_event(
            regarding,
            event_type,
            reason,
            message,
            action=action,
            instance=self.instance,
            now=now,
            related=object_reference(related) if related is not None else None,
        )
        namespace = body["metadata"]["namespace"]
        event = self._object_call("create", "POST", EVENTS, namespace, body=body)
        self._series.record(key, Series(namespace, event["metadata"]["name"], 1, now))
        return event

    # --- secrets ----------------------------------------------------------------------------

    def read_secret_key(self, namespace: str, name: str, key: str) -> bytes:
        """One value of a Secret. NotFound (temporary: it may be created later) names the key
        when the Secret exists without it."""
        secret = self._object_call("get", "GET", SECRETS, namespace, name)
        data = secret.get("data") or {}
        if key not in data:
            raise NotFound(
                f"Secret {namespace}/{name} has no key {key!r}",
                status=404,
                verb="get",
                resource="secrets",
            )
        return base64.b64decode(data[key])

    def ensure_secret(
        self,
        name: str,
        namespace: str,
        data: Mapping[str, str | bytes],
        *,
        owner: Resource | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        immutable_keys: Iterable[str] | None = None,
        secret_type: str = "Opaque",  # noqa: S107 - a Secret type, not a password
    ) -> EnsuredSecret:
        """Make sure a generated Secret exists, never replacing a value it already holds.

        Create first and treat AlreadyExists as "someone was first" (another replica, an earlier
        reconcile, the user): there is no read-then-create window in which two writers could
        both generate a password. For an existing Secret, keys in `immutable_keys` (default:
        all of `data`) keep their stored value and are only added when missing; other keys
        (e.g. a username that follows the spec) are brought up to date, guarded by
        resourceVersion. Returns the stored values, which are the ones to use.
        """
        encoded = _encode_data(data)
        metadata: Object = {"name": name, "namespace": namespace}
        if labels:
            metadata["labels"] = dict(labels)
        if owner is not None:
            metadata["ownerReferences"] = [owner_reference(owner)]
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": secret_type,
            "data": encoded,
        }
        try:
            created = self._object_call("create", "POST", SECRETS, namespace, body=body)
        except AlreadyExists:
            pass
        else:
            return EnsuredSecret(
                created=True, updated=False, data=_decode_data(created.get("data"))
            )
        fixed = set(data) if immutable_keys is None else set(immutable_keys)
        for _ in range(WRITE_ATTEMPTS):
            live = self._object_call("get", "GET", SECRETS, namespace, name)
            stored = live.get("data") or {}
            changes = {
                key: value
                for key, value in encoded.items()
                if key not in stored or (key not in fixed and stored[key] != value)
            }
            if not changes:
                return EnsuredSecret(created=False, updated=False, data=_decode_data(stored))
            patch = {
                "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                "data": changes,
            }
            try:
                updated = self._object_call(
                    "patch",
                    "PATCH",
                    SECRETS,
                    namespace,
                    name,
                    body=patch,
                    content_type=MERGE_PATCH,
                )
            except Conflict:
                continue
            return EnsuredSecret(
                created=False, updated=True, data=_decode_data(updated.get("data"))
            )
        raise Conflict(
            f"patch Secret {namespace}/{name}: the Secret changed on each of {WRITE_ATTEMPTS} "
            "attempts; retry later",
            status=409,
            verb="patch",
            resource="secrets",
        )


def _as_mapping(obj: Resource | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(obj, BaseModel):
        dumped: dict[str, Any] = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped
    return obj
