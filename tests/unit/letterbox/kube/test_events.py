from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from letterbox.kube.events import (
    NOTE_LIMIT,
    REPORTING_CONTROLLER,
    EventType,
    Series,
    SeriesCache,
    event_key,
    event_name,
    micro_time,
    new_event,
    object_reference,
    series_patch,
    truncate_utf8,
)

T0 = datetime(2026, 11, 1, 12, 0, 0, 5, tzinfo=UTC)
BOX = {
    "apiVersion": "letterbox.dev/v1alpha1",
    "kind": "Mailbox",
    "metadata": {"name": "alice", "namespace": "mail", "uid": "u-1", "labels": {"x": "y"}},
    "spec": {},
}


def test_micro_time_has_six_digits_in_utc() -> None:
    assert micro_time(T0) == "2026-11-01T12:00:00.000005Z"
    elsewhere = T0.astimezone(timezone(timedelta(hours=2)))
    assert micro_time(elsewhere) == "2026-11-01T12:00:00.000005Z"


def test_truncate_utf8_cuts_on_a_character_boundary() -> None:
    assert truncate_utf8("abc", 3) == "abc"
    assert truncate_utf8("aé", 2) == "a"  # é is two bytes
    assert len(truncate_utf8("é" * 1000, NOTE_LIMIT).encode()) <= NOTE_LIMIT


def test_object_reference() -> None:
    assert object_reference(BOX) == {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "Mailbox",
        "name": "alice",
        "namespace": "mail",
        "uid": "u-1",
    }
    with pytest.raises(ValueError, match=r"apiVersion, kind and metadata\.name"):
        object_reference({"kind": "Mailbox", "metadata": {"name": "x"}})


def test_event_name_is_a_valid_length() -> None:
    assert event_name("alice", 255) == "alice.ff"
    assert len(event_name("a" * 300)) == 253


def test_new_event_fills_every_required_field_within_limits() -> None:
    event = new_event(
        object_reference(BOX),
        EventType.WARNING,
        "R" * 200,
        "n" * 5000,
        action="Reconcile",
        instance="i" * 200,
        now=T0,
    )
    assert event["apiVersion"] == "events.k8s.io/v1"
    assert event["metadata"]["namespace"] == "mail"
    assert event["metadata"]["name"].startswith("alice.")
    assert event["eventTime"] == "2026-11-01T12:00:00.000005Z"
    assert event["reportingController"] == REPORTING_CONTROLLER
    assert (len(event["reason"]), len(event["reportingInstance"]), len(event["note"])) == (
        128,
        128,
        NOTE_LIMIT,
    )
    assert event["type"] == "Warning"
    assert event["regarding"]["uid"] == "u-1"
    assert "related" not in event


def test_cluster_scoped_objects_get_their_events_in_default() -> None:
    domain = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    event = new_event(
        object_reference(domain), EventType.NORMAL, "R", "", action="A", instance="i", now=T0
    )
    assert event["metadata"]["namespace"] == "default"


def test_series_patch() -> None:
    assert series_patch(3, T0) == {
        "series": {"count": 3, "lastObservedTime": "2026-11-01T12:00:00.000005Z"}
    }


def test_event_key_ignores_unrelated_metadata() -> None:
    ref = object_reference(BOX)
    other = object_reference({**BOX, "metadata": {**BOX["metadata"], "labels": {}}})  # type: ignore[dict-item]
    assert event_key(ref, EventType.NORMAL, "R", "n", "A") == event_key(
        other, EventType.NORMAL, "R", "n", "A"
    )
    assert event_key(ref, EventType.NORMAL, "R", "n", "A") != event_key(
        ref, EventType.NORMAL, "R", "other note", "A"
    )


def test_series_cache_window_and_size() -> None:
    cache = SeriesCache(size=2, window=timedelta(minutes=6))
    ref = object_reference(BOX)
    keys = [event_key(ref, EventType.NORMAL, f"R{i}", "", "A") for i in range(3)]
    cache.record(keys[0], Series("mail", "e0", 1, T0))
    assert cache.recent(keys[0], T0 + timedelta(minutes=5)) == Series("mail", "e0", 1, T0)
    assert cache.recent(keys[0], T0 + timedelta(minutes=7)) is None  # window over: forgotten
    assert cache.recent(keys[0], T0) is None

    for index, key in enumerate(keys):
        cache.record(key, Series("mail", f"e{index}", 1, T0))
    assert cache.recent(keys[0], T0) is None  # least recently used, evicted
    assert cache.recent(keys[2], T0) is not None
    cache.forget(keys[2])
    assert cache.recent(keys[2], T0) is None
