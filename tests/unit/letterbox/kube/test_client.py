"""`Kube` against a scripted fake of its HTTP transport: the request shapes and the retry, skip and
race handling that a real server only shows under contention (the e2e tests cover the rest)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import urllib3

from letterbox.api.mailbox import Mailbox, MailboxSpec, MailboxStatus
from letterbox.api.meta import ObjectMeta
from letterbox.kube import (
    Conflict,
    EventType,
    Expired,
    Invalid,
    Kube,
    NotFound,
    Propagation,
    Unavailable,
    WatchStream,
    owner_reference,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DISCOVERY: dict[str, Any] = {
    "/api/v1": {
        "resources": [
            {"name": "secrets", "kind": "Secret", "namespaced": True},
            {"name": "configmaps", "kind": "ConfigMap", "namespaced": True},
        ]
    },
    "/apis/letterbox.dev/v1alpha1": {
        "resources": [
            {"name": "mailboxes", "kind": "Mailbox", "namespaced": True},
            {"name": "mailboxes/status", "kind": "Mailbox", "namespaced": True},
            {"name": "aliases", "kind": "Alias", "namespaced": True},  # no status, for the test
        ]
    },
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class FakeResponse:
    status: int
    payload: Any

    @property
    def data(self) -> bytes:
        return b"" if self.payload is None else json.dumps(self.payload).encode()

    def read(self) -> bytes:
        return self.data

    def release_conn(self) -> None:
        pass


Handler = Callable[[Request], tuple[int, Any]]


def status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "code": code, "reason": reason, "message": message or reason}


@dataclass
class FakeApi:
    """Answers discovery itself and hands every other request to `handler`."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: tuple[float, float],
        stream: bool = False,
    ) -> FakeResponse:
        path, _, query = path.partition("?")
        if path in DISCOVERY:
            return FakeResponse(200, DISCOVERY[path])
        payload = None if body is None else json.loads(body)
        seen = Request(method, path, parse_qs(query), headers["Content-Type"], payload)
        self.requests.append(seen)
        return FakeResponse(*self.handler(seen))

    def close(self) -> None:
        pass


def kube_with(handler: Handler) -> tuple[Kube, FakeApi]:
    api = FakeApi(handler)
    return Kube(api, instance="test", clock=lambda: T0), api  # type: ignore[arg-type]


def live_mailbox(rv: str = "1", status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "Mailbox",
        "metadata": {"name": "alice", "namespace": "ns", "uid": "u-1", "resourceVersion": rv},
        "spec": {"address": "alice@example.com"},
        "status": status or {},
    }


# --- apply / get / list / delete ------------------------------------------------------------


def test_apply_is_a_forced_server_side_apply_with_our_field_manager() -> None:
    kube, api = kube_with(lambda request: (200, request.body))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns", "labels": {}, "annotations": {}},
        "data": {"kept": "eA=="},
        "stringData": {"password": "p"},
    }
    kube.apply(secret)
    (request,) = api.requests
    assert (request.method, request.path) == ("PATCH", "/api/v1/namespaces/ns/secrets/s")
    assert request.content_type == "application/apply-patch+yaml"
    assert request.query == {"fieldManager": ["letterbox"], "force": ["true"]}
    # stringData is folded into data; empty metadata maps are dropped; the input is untouched.
    assert request.body["data"] == {"kept": "eA==", "password": base64.b64encode(b"p").decode()}
    assert "stringData" not in request.body
    assert request.body["metadata"] == {"name": "s", "namespace": "ns"}
    assert "stringData" in secret and "labels" in secret["metadata"]

    kube.apply({**secret, "stringData": {}}, field_manager="other", force=False)
    assert api.requests[-1].query == {"fieldManager": ["other"]}


def test_every_write_names_the_field_manager() -> None:
    kube, api = kube_with(lambda request: (201, {"metadata": {"name": "e.1", "namespace": "ns"}}))
    kube.emit_event(live_mailbox(), EventType.NORMAL, "R", "n")
    assert api.requests[0].query == {"fieldManager": ["letterbox"]}


def test_list_pages_and_restores_kinds() -> None:
    pages = {
        None: {"metadata": {"continue": "t1"}, "items": [{"metadata": {"name": "a"}}]},
        "t1": {"metadata": {}, "items": [{"metadata": {"name": "b"}}]},
    }

    def handler(request: Request) -> tuple[int, Any]:
        token = request.query.get("continue", [None])[0]
        return 200, pages[token]

    kube, api = kube_with(handler)
    items = kube.list("v1", "ConfigMap", "ns", label_selector={"b": "2", "a": "1"}, page_size=1)
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in items] == [
        ("v1", "ConfigMap", "a"),
        ("v1", "ConfigMap", "b"),
    ]
    assert api.requests[0].query == {"labelSelector": ["a=1,b=2"], "limit": ["1"]}
    assert api.requests[1].query["continue"] == ["t1"]


def test_delete_passes_the_propagation_policy_and_tolerates_missing() -> None:
    answers = iter([(200, {}), (404, status(404, "NotFound"))])
    kube, api = kube_with(lambda request: next(answers))
    assert kube.delete("v1", "Secret", "s", "ns", propagation=Propagation.FOREGROUND)
    assert api.requests[0].query == {"propagationPolicy": ["Foreground"]}
    assert not kube.delete("v1", "Secret", "s", "ns")


def test_an_unreachable_server_is_unavailable() -> None:
    def handler(request: Request) -> tuple[int, Any]:
        raise urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]

    kube, _ = kube_with(handler)
    with pytest.raises(Unavailable, match="cannot reach the API server") as raised:
        kube.get("v1", "Secret", "s", "ns")
    assert raised.value.temporary


# --- status ---------------------------------------------------------------------------------


def test_an_unchanged_status_is_not_written() -> None:
    stored = {"observedGeneration": 1, "conditions": []}
    kube, api = kube_with(lambda request: (200, live_mailbox(status=stored)))
    write = kube.patch_status("Mailbox", "ns", "alice", MailboxStatus(observed_generation=1))
    assert not write.written
    assert [r.method for r in api.requests] == ["GET"]
    # With the caller's copy of the object there is not even a read.
    write = kube.patch_status(
        "Mailbox",
        "ns",
        "alice",
        MailboxStatus(observed_generation=1),
        observed=live_mailbox(status=stored),
    )
    assert not write.written and len(api.requests) == 1


def test_a_conflict_rereads_and_writes_the_difference_again() -> None:
    reads = iter([live_mailbox("1", {"quotaBytes": 5}), live_mailbox("2", {"quotaBytes": 6})])
    patches = iter([(409, status(409, "Conflict")), (200, live_mailbox("3"))])

    def handler(request: Request) -> tuple[int, Any]:
        return (200, next(reads)) if request.method == "GET" else next(patches)

    kube, api = kube_with(handler)
    write = kube.patch_status("Mailbox", "ns", "alice", MailboxStatus(observed_generation=2))
    assert write.written
    patch_requests = [r for r in api.requests if r.method == "PATCH"]
    assert [r.path for r in patch_requests] == [
        "/apis/letterbox.dev/v1alpha1/namespaces/ns/mailboxes/alice/status"
    ] * 2
    assert patch_requests[-1].content_type == "application/merge-patch+json"
    assert patch_requests[-1].body == {
        "metadata": {"resourceVersion": "2"},
        "status": {"quotaBytes": None, "observedGeneration": 2, "conditions": []},
    }


def test_patch_status_gives_up_after_repeated_conflicts() -> None:
    def handler(request: Request) -> tuple[int, Any]:
        if request.method == "GET":
            return 200, live_mailbox()
        return 409, status(409, "Conflict")

    kube, api = kube_with(handler)
    with pytest.raises(Conflict, match="changed on each of 3 attempts"):
        kube.patch_status("Mailbox", "ns", "alice", MailboxStatus(observed_generation=1))
    assert [r.method for r in api.requests] == ["GET", "PATCH"] * 3


def test_patch_status_needs_a_status_subresource() -> None:
    kube, _ = kube_with(lambda request: (200, {}))
    with pytest.raises(Invalid, match="has no status subresource"):
        kube.patch_status("Alias", "ns", "a", {"observedGeneration": 1})


def test_patch_status_of_a_deleted_object() -> None:
    kube, _ = kube_with(lambda request: (404, status(404, "NotFound", "gone")))
    with pytest.raises(NotFound, match="get Mailbox ns/alice: not found"):
        kube.patch_status("Mailbox", "ns", "alice", MailboxStatus())


# --- events ---------------------------------------------------------------------------------


def test_a_repeated_event_extends_its_series_and_restarts_when_expired() -> None:
    created = iter(["alice.1", "alice.2"])
    patched = iter([(200, {"series": {"count": 2}}), (404, status(404, "NotFound"))])

    def handler(request: Request) -> tuple[int, Any]:
        if request.method == "POST":
            return 201, {**request.body, "metadata": {"name": next(created), "namespace": "ns"}}
        return next(patched)

    kube, api = kube_with(handler)
    for _ in range(3):
        kube.emit_event(live_mailbox(), EventType.WARNING, "Failed", "boom")
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in api.requests] == [
        ("POST", "events"),
        ("PATCH", "alice.1"),
        ("PATCH", "alice.1"),  # 404: expired
        ("POST", "events"),
    ]
    assert api.requests[1].body == {
        "series": {"count": 2, "lastObservedTime": "2026-11-01T00:00:00.000000Z"}
    }
    first = api.requests[0].body
    assert (first["reportingInstance"], first["action"], first["type"]) == (
        "test",
        "Reconcile",
        "Warning",
    )


# --- secrets --------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_ensure_secret_creates_with_owner_and_labels() -> None:
    kube, api = kube_with(lambda request: (201, request.body))
    made = kube.ensure_secret("c", "ns", {"password": "p"}, owner=live_mailbox(), labels={"a": "b"})
    assert (made.created, made.data) == (True, {"password": b"p"})
    body = api.requests[0].body
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["metadata"]["labels"] == {"a": "b"}
    assert body["data"] == {"password": b64("p")}


def test_ensure_secret_keeps_stored_values_and_adds_missing_keys() -> None:
    stored = {
        "metadata": {"name": "c", "resourceVersion": "7"},
        "data": {"password": b64("old"), "username": b64("a@x")},
    }

    def handler(request: Request) -> tuple[int, Any]:
        if request.method == "POST":
            return 409, status(409, "AlreadyExists")
        if request.method == "GET":
            return 200, stored
        return 200, {"data": {**stored["data"], **request.body["data"]}}

    kube, api = kube_with(handler)
    kept = kube.ensure_secret("c", "ns", {"password": "new", "username": "a@x"})
    assert (kept.created, kept.updated) == (False, False)
    assert kept.data == {"password": b"old", "username": b"a@x"}
    assert [r.method for r in api.requests] == ["POST", "GET"]

    added = kube.ensure_secret("c", "ns", {"password": "new", "salt": "s"})
    assert added.updated and added.data["password"] == b"old"
    assert api.requests[-1].body == {
        "metadata": {"resourceVersion": "7"},
        "data": {"salt": b64("s")},
    }


def test_ensure_secret_retries_a_lost_race_on_update() -> None:
    versions = iter(["1", "2"])
    patches = iter([(409, status(409, "Conflict")), (200, {"data": {"u": b64("new")}})])

    def handler(request: Request) -> tuple[int, Any]:
        if request.method == "POST":
            return 409, status(409, "AlreadyExists")
        if request.method == "GET":
            return 200, {"metadata": {"resourceVersion": next(versions)}, "data": {"u": b64("old")}}
        return next(patches)

    kube, api = kube_with(handler)
    result = kube.ensure_secret("c", "ns", {"u": "new"}, immutable_keys=())
    assert result.updated and result.data == {"u": b"new"}
    assert api.requests[-1].body["metadata"] == {"resourceVersion": "2"}


def test_owner_reference_from_a_model_or_a_live_object() -> None:
    model = Mailbox(
        metadata=ObjectMeta(name="alice", namespace="ns", uid="u-9"),
        spec=MailboxSpec(address="alice@example.com"),
    )
    assert owner_reference(model) == {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "Mailbox",
        "name": "alice",
        "uid": "u-9",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert owner_reference(live_mailbox())["uid"] == "u-1"
    with pytest.raises(ValueError, match="uid"):
        owner_reference({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}})


# --- watch streams ----------------------------------------------------------------------------


class FakeStream:
    """urllib3's streaming response as `WatchStream` uses it: chunks cut anywhere."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks, self.fail = chunks, fail
        self.released = self.closed = self.shut = False

    def stream(self, amount: int, decode_content: bool = True) -> Any:
        yield from self.chunks
        if self.fail is not None:
            raise self.fail

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.shut = True


def watch_line(type_: str, name: str, rv: str, **extra: Any) -> bytes:
    obj = {"kind": "Mailbox", "metadata": {"name": name, "resourceVersion": rv}, **extra}
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


def test_a_watch_stream_yields_events_per_chunk_and_follows_bookmarks() -> None:
    added, modified = watch_line("ADDED", "a", "5"), watch_line("MODIFIED", "a", "6")
    bookmark = json.dumps(
        {"type": "BOOKMARK", "object": {"kind": "Mailbox", "metadata": {"resourceVersion": "9"}}}
    ).encode()
    # An event split over two chunks, two events in one chunk, a bookmark at the end.
    response = FakeStream([added[:10], added[10:] + modified, bookmark[:7], bookmark[7:] + b"\n"])
    stream = WatchStream(response, "1", what="Mailbox ns/*", resource="mailboxes", group="g")
    batches = [[(e.type, e.object["metadata"]["resourceVersion"]) for e in b] for b in stream]
    assert batches == [[("ADDED", "5"), ("MODIFIED", "6")]]  # bookmarks are not events
    assert stream.resource_version == "9"
    assert response.released and not response.closed  # read to its end: back to the pool


def test_a_watch_stream_error_event_raises_and_a_broken_stream_is_unavailable() -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    response = FakeStream([json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"])
    stream = WatchStream(response, "1", what="Mailbox ns/*", resource="mailboxes", group="g")
    with pytest.raises(Expired, match="too old"):
        list(stream)
    assert response.closed and not response.released  # half read: never reused

    broken = FakeStream(
        [watch_line("ADDED", "b", "3")], fail=urllib3.exceptions.ProtocolError("reset")
    )
    stream = WatchStream(broken, "1", what="Mailbox ns/*", resource="mailboxes", group="g")
    batches = iter(stream)
    assert [e.object["metadata"]["name"] for e in next(batches)] == ["b"]
    with pytest.raises(Unavailable, match="the stream broke"):
        next(batches)
    assert stream.resource_version == "3"  # resume after what was delivered


def test_closing_a_watch_stream_ends_it_quietly() -> None:
    response = FakeStream([watch_line("ADDED", "c", "4")], fail=OSError("shut down"))
    stream = WatchStream(response, "", what="Mailbox ns/*", resource="mailboxes", group="g")
    batches = iter(stream)
    assert len(next(batches)) == 1
    stream.close()  # e.g. from the event loop while the thread waits for the next chunk
    assert response.shut
    assert list(batches) == []  # the read the shutdown broke ends the stream, no error
    assert response.closed
    never_read = FakeStream([])
    WatchStream(never_read, "", what="x", resource="x", group="").close()
    assert never_read.closed
