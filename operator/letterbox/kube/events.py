"""events.k8s.io/v1 Events: building them and folding repeats into a series (no I/O here).

A reconcile loop that fails the same way every few seconds would otherwise bury `kubectl
describe` under identical lines and load etcd with one object per attempt. Like client-go's
event recorder, an event identical to one we emitted within `SERIES_WINDOW` increments that
event's `series.count` instead of creating a new object.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

REPORTING_CONTROLLER = "letterbox.dev/operator"
EVENT_API_VERSION = "events.k8s.io/v1"
# client-go finishes a series after 6 minutes without a repeat; we use the same window.
SERIES_WINDOW = timedelta(minutes=6)
# The API server rejects notes over 1 kB and reason/action/instance over 128 characters.
NOTE_LIMIT = 1024
SHORT_LIMIT = 128
# Bounded like client-go's LRU so 10,000 objects cannot grow the cache without limit.
CACHE_SIZE = 4096


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 in UTC with exactly six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def truncate_utf8(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, cut on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """The ObjectReference of a live object (apiVersion, kind, name, namespace, uid)."""
    metadata = obj.get("metadata") or {}
    reference = {
        "apiVersion": str(obj.get("apiVersion", "")),
        "kind": str(obj.get("kind", "")),
        "name": str(metadata.get("name", "")),
    }
    if not (reference["apiVersion"] and reference["kind"] and reference["name"]):
        raise ValueError("an event needs an object with apiVersion, kind and metadata.name")
    for source, target in (("namespace", "namespace"), ("uid", "uid")):
        if metadata.get(source):
            reference[target] = str(metadata[source])
    return reference


def event_name(regarding_name: str, now_ns: int | None = None) -> str:
    """client-go's naming: `<object>.<hex nanoseconds>`, unique enough and grouped by object."""
    suffix = f".{now_ns if now_ns is not None else time.time_ns():x}"
    return regarding_name[: 253 - len(suffix)] + suffix


def new_event(
    regarding: Mapping[str, str],
    type_: EventType,
    reason: str,
    note: str,
    *,
    action: str,
    instance: str,
    now: datetime,
    related: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body of a new Event about `regarding` (an ObjectReference)."""
    # Events live beside their object; cluster-scoped objects' events go to "default", as
    # client-go does.
    namespace = regarding.get("namespace") or "default"
    event: dict[str, Any] = {
        "apiVersion": EVENT_API_VERSION,
        "kind": "Event",
        "metadata": {
            "name": event_name(regarding["name"]),
            "namespace": namespace,
        },
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:SHORT_LIMIT],
        "action": action[:SHORT_LIMIT],
        "reason": reason[:SHORT_LIMIT],
        "note": truncate_utf8(note, NOTE_LIMIT),
        "type": str(type_),
        "regarding": dict(regarding),
    }
    if related is not None:
        event["related"] = dict(related)
    return event


def series_patch(count: int, now: datetime) -> dict[str, Any]:
    """The merge patch recording the `count`-th occurrence (count ≥ 2, as the server demands)."""
    return {"series": {"count": count, "lastObservedTime": micro_time(now)}}


@dataclass(frozen=True)
class EventKey:
    """What makes two events identical: same object, same type, reason, action and note."""

    regarding: tuple[str, ...]
    type: str
    reason: str
    action: str
    note: str


@dataclass(frozen=True)
class Series:
    """The last event we emitted for a key: its object name and how often it happened."""

    namespace: str
    name: str
    count: int
    last_observed: datetime


class SeriesCache:
    """Thread-safe LRU of recent events, keyed by `EventKey`."""

    def __init__(self, size: int = CACHE_SIZE, window: timedelta = SERIES_WINDOW) -> None:
        self._size = size
        self._window = window
        self._lock = threading.Lock()
        self._entries: OrderedDict[EventKey, Series] = OrderedDict()

    def recent(self, key: EventKey, now: datetime) -> Series | None:
        """The series to extend, if an identical event happened within the window."""
        with self._lock:
            series = self._entries.get(key)
            if series is None:
                return None
            if now - series.last_observed > self._window:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return series

    def record(self, key: EventKey, series: Series) -> None:
        with self._lock:
            self._entries[key] = series
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, key: EventKey) -> None:
        with self._lock:
            self._entries.pop(key, None)


def event_key(
    regarding: Mapping[str, str], type_: EventType, reason: str, note: str, action: str
) -> EventKey:
    return EventKey(
        regarding=tuple(
            regarding.get(field, "") for field in ("apiVersion", "kind", "namespace", "name", "uid")
        ),
        type=str(type_),
        reason=reason,
        action=action,
        note=truncate_utf8(note, NOTE_LIMIT),
    )
