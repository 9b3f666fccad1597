"""Watches against a real kube-apiserver: `Kube.watch` (current objects, then changes, resumed
from its resourceVersion, 410 as `Expired`), `AsyncKube.watch` (parsing in its thread, batches
on the loop, cancellation), and the operator's store following a namespace with them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from letterbox.api.mailbox import Mailbox, MailboxSpec
from letterbox.api.meta import API_VERSION, ObjectMeta
from letterbox.kube import AsyncKube, Expired, Kube, Object, WatchEvent, WatchStream
from letterbox.reconcile.snapshot import Kind
from letterbox.reconcile.store import ObjectStore, follow

pytestmark = pytest.mark.e2e


def mailbox(namespace: str, name: str, address: str | None = None) -> Object:
    model = Mailbox(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=MailboxSpec(address=address or f"{name}@example.com"),
    )
    return model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})


def secret(namespace: str, name: str, value: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"password": value},
    }


def events_until(
    stream: WatchStream, done: Callable[[list[WatchEvent]], bool], seconds: float = 20
) -> list[WatchEvent]:
    seen: list[WatchEvent] = []
    deadline = time.monotonic() + seconds
    for batch in stream:
        seen.extend(batch)
        if done(seen) or time.monotonic() > deadline:
            break
    return seen


def test_a_watch_sends_the_current_objects_then_the_changes(kube: Kube, namespace: str) -> None:
    for name in ("alice", "bob"):
        kube.apply(mailbox(namespace, name))
    with kube.watch(API_VERSION, "Mailbox", namespace, timeout_seconds=30) as stream:
        initial = events_until(stream, lambda seen: len(seen) >= 2)
        assert sorted((e.type, e.object["metadata"]["name"]) for e in initial) == [
            ("ADDED", "alice"),
            ("ADDED", "bob"),
        ]
        assert initial[0].object["kind"] == "Mailbox"
        kube.apply(mailbox(namespace, "alice", "alicia@example.com"))
        kube.delete(API_VERSION, "Mailbox", "bob", namespace)
        changes = events_until(stream, lambda seen: len(seen) >= 2)
        assert [(e.type, e.object["metadata"]["name"]) for e in changes] == [
            ("MODIFIED", "alice"),
            ("DELETED", "bob"),
        ]
        assert changes[0].object["spec"]["address"] == "alicia@example.com"
        resume = stream.resource_version
    assert resume == changes[-1].object["metadata"]["resourceVersion"]

    # Resumed from that version: only what came after, no initial objects again.
    kube.apply(mailbox(namespace, "carol"))
    with kube.watch(
        API_VERSION, "Mailbox", namespace, resource_version=resume, timeout_seconds=30
    ) as stream:
        later = events_until(stream, lambda seen: len(seen) >= 1)
    assert [(e.type, e.object["metadata"]["name"]) for e in later] == [("ADDED", "carol")]


def test_a_watch_ends_when_the_server_ends_it(kube: Kube, namespace: str) -> None:
    kube.apply(mailbox(namespace, "dan"))
    began = time.monotonic()
    with kube.watch(API_VERSION, "Mailbox", namespace, timeout_seconds=2) as stream:
        seen = [event for batch in stream for event in batch]
    assert 1.5 < time.monotonic() - began < 30
    assert [e.object["metadata"]["name"] for e in seen] == ["dan"]
    assert stream.resource_version == seen[0].object["metadata"]["resourceVersion"]


def test_a_version_the_server_no_longer_keeps_is_expired(kube: Kube, namespace: str) -> None:
    # Enough writes that the watch cache's window no longer reaches the namespace's start.
    for index in range(3):
        kube.apply(mailbox(namespace, f"user{index}"))
    stream = kube.watch(API_VERSION, "Mailbox", namespace, resource_version="1", timeout_seconds=10)
    with pytest.raises(Expired) as caught, stream:  # the error arrives in the stream
        for _ in stream:
            pass
    assert caught.value.status == 410
    assert caught.value.temporary  # retried from the current state


async def test_async_watch_transforms_in_its_thread_and_delivers_on_the_loop(
    kube: Kube, namespace: str
) -> None:
    client = AsyncKube(kube)
    kube.apply(mailbox(namespace, "erin"))
    loop_thread = asyncio.get_running_loop()
    transformed_in: set[str] = set()
    delivered: list[tuple[str, str]] = []
    got_one = asyncio.Event()

    def transform(event: WatchEvent) -> tuple[str, str]:
        transformed_in.add(threading.current_thread().name)
        return event.type, event.object["metadata"]["name"]

    def deliver(batch: Sequence[tuple[str, str]]) -> None:
        assert asyncio.get_running_loop() is loop_thread
        delivered.extend(batch)
        got_one.set()

    task = asyncio.create_task(
        client.watch(API_VERSION, "Mailbox", namespace, transform, deliver, timeout_seconds=60)
    )
    await asyncio.wait_for(got_one.wait(), 20)
    assert delivered == [("ADDED", "erin")]
    assert transformed_in == {"watch-Mailbox"}
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - began < 5  # the stream is closed, not left to its timeout

    # Run to the server's end: the resourceVersion to resume from comes back.
    version = await client.watch(
        API_VERSION, "Mailbox", namespace, transform, deliver, timeout_seconds=1
    )
    assert (
        version
        == kube.get(API_VERSION, "Mailbox", "erin", namespace)["metadata"]["resourceVersion"]
    )
    client.close()


async def test_the_store_follows_the_namespace_and_asks_for_passes(
    kube: Kube, namespace: str
) -> None:
    client = AsyncKube(kube)
    kube.apply(mailbox(namespace, "frank"))
    kube.apply(secret(namespace, "frank-password", "one"))
    kube.apply(secret(namespace, "unrelated", "x"))
    store = ObjectStore()
    nudges: list[float] = []
    task = asyncio.create_task(
        follow(
            client,
            store,
            namespace,
            nudge=lambda: nudges.append(time.monotonic()),
            secret_matters=lambda name: name == "frank-password",
        )
    )

    async def until(check: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    def addresses() -> dict[str, str]:
        return {
            o.key.name: o.model.spec.address
            for o in store.snapshot(namespace).mailboxes
            if o.model is not None
        }

    try:
        await until(lambda: addresses() == {"frank": "frank@example.com"}, "the mailbox")
        await until(lambda: "frank-password" in store.snapshot(namespace).secrets, "Secrets")
        assert store.snapshot(namespace).secrets["frank-password"].text("password") == "one"
        assert nudges  # a new Mailbox (no observedGeneration yet) and its password Secret

        # Our own status write's echo is stored but asks for no pass.
        await asyncio.sleep(0.5)
        nudges.clear()
        await client.patch_status(Kind.MAILBOX.value, namespace, "frank", {"observedGeneration": 1})
        await until(
            lambda: store.snapshot(namespace).mailboxes[0].raw.get("status"), "the status echo"
        )
        kube.apply(secret(namespace, "unrelated", "y"))
        await asyncio.sleep(1.0)
        assert nudges == []

        # A change that matters: the referenced Secret, then a spec change.
        kube.apply(secret(namespace, "frank-password", "two"))
        await until(
            lambda: store.snapshot(namespace).secrets["frank-password"].text("password") == "two",
            "the new password",
        )
        assert len(nudges) == 1
        kube.apply(mailbox(namespace, "frank", "franky@example.com"))
        await until(lambda: addresses() == {"frank": "franky@example.com"}, "the change")
        assert len(nudges) == 2
        kube.delete(API_VERSION, "Mailbox", "frank", namespace)
        await until(lambda: addresses() == {}, "the deletion")
        assert len(nudges) == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client.close()
