"""letterbox.kube against a real kube-apiserver: server-side apply, get/list/delete, status
writes that skip unchanged statuses, events with series, create-only Secrets, error mapping."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from letterbox.api.conditions import set_condition
from letterbox.api.mailbox import Mailbox, MailboxSpec, MailboxStatus
from letterbox.api.meta import API_VERSION, ConditionStatus, ObjectMeta
from letterbox.kube import (
    REPORTING_CONTROLLER,
    AsyncKube,
    Conflict,
    EventType,
    Invalid,
    Kube,
    NotFound,
    Object,
)
from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def mailbox(namespace: str, name: str = "alice", **labels: str) -> Object:
    model = Mailbox(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=MailboxSpec(address=f"{name}@example.com", quota="1Gi"),
    )
    return model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})


def config_map(namespace: str, data: dict[str, str]) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mail-config", "namespace": namespace, "labels": {"app": "mail"}},
        "data": data,
    }


def secret(namespace: str, data: dict[str, str]) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "mail-config", "namespace": namespace, "labels": {"app": "mail"}},
        "stringData": data,
    }


def stateful_set(namespace: str, data: dict[str, str]) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "mail", "namespace": namespace, "labels": {"app": "mail"}},
        "spec": {
            "serviceName": "mail",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "mail"}},
            "template": {
                "metadata": {"labels": {"app": "mail"}},
                "spec": {
                    "containers": [
                        {
                            "name": "mailpod",
                            "image": "registry.invalid/mailpod:1",
                            "env": [{"name": k, "value": v} for k, v in sorted(data.items())],
                        }
                    ]
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "mail"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def rv(obj: Object) -> str:
    return str(obj["metadata"]["resourceVersion"])


# --- server-side apply ----------------------------------------------------------------------


@pytest.mark.parametrize("build", [config_map, secret, stateful_set], ids=lambda b: b.__name__)
def test_apply_creates_updates_and_is_idempotent(kube: Kube, namespace: str, build: Any) -> None:
    created = kube.apply(build(namespace, {"A": "1", "B": "2"}))
    again = kube.apply(build(namespace, {"A": "1", "B": "2"}))
    assert rv(again) == rv(created), "an unchanged apply must not write"
    managers = {(m["manager"], m["operation"]) for m in again["metadata"]["managedFields"]}
    assert managers == {("letterbox", "Apply")}

    # Changing a value and leaving a key out: the rendered object is our whole intent, so the
    # key we owned before is removed.
    updated = kube.apply(build(namespace, {"A": "changed"}))
    assert rv(updated) != rv(again)
    live = kube.get(
        updated["apiVersion"],
        updated["kind"],
        "mail" if build is stateful_set else "mail-config",
        namespace,
    )
    assert rv(live) == rv(updated)
    if build is config_map:
        assert live["data"] == {"A": "changed"}
    elif build is secret:
        assert live["data"] == {"A": "Y2hhbmdlZA=="}
    else:
        env = live["spec"]["template"]["spec"]["containers"][0]["env"]
        assert env == [{"name": "A", "value": "changed"}]
        assert rv(kube.apply(build(namespace, {"A": "changed"}))) == rv(updated)


def test_apply_takes_over_fields_only_when_forced(
    kube: Kube, crds: ControlPlane, namespace: str
) -> None:
    kube.apply(config_map(namespace, {"A": "ours"}))
    # Someone else claims the field (as `kubectl apply --server-side` would).
    crds.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=someone",
        "-f",
        "-",
        input=json.dumps(config_map(namespace, {"A": "theirs"})),
    )
    with pytest.raises(Conflict) as conflict:
        kube.apply(config_map(namespace, {"A": "ours"}), force=False)
    assert conflict.value.status == 409
    assert "someone" in str(conflict.value)
    assert kube.apply(config_map(namespace, {"A": "ours"}))["data"] == {"A": "ours"}


def test_apply_get_list_delete_a_mailbox(kube: Kube, namespace: str) -> None:
    applied = kube.apply(mailbox(namespace, "alice", team="a"))
    kube.apply(mailbox(namespace, "bob", team="b"))
    assert applied["spec"]["address"] == "alice@example.com"
    assert rv(kube.apply(mailbox(namespace, "alice", team="a"))) == rv(applied)
    assert kube.get(API_VERSION, "Mailbox", "alice", namespace)["metadata"]["uid"]

    assert [m["metadata"]["name"] for m in kube.list(API_VERSION, "Mailbox", namespace)] == [
        "alice",
        "bob",
    ]
    selected = kube.list(API_VERSION, "Mailbox", namespace, label_selector={"team": "b"})
    assert [(m["kind"], m["metadata"]["name"]) for m in selected] == [("Mailbox", "bob")]
    across = kube.list(API_VERSION, "Mailbox", label_selector="team=a")
    assert [m["metadata"]["namespace"] for m in across] == [namespace]

    assert kube.delete(API_VERSION, "Mailbox", "bob", namespace) is True
    assert kube.delete(API_VERSION, "Mailbox", "bob", namespace) is False  # already gone
    with pytest.raises(NotFound):
        kube.delete(API_VERSION, "Mailbox", "bob", namespace, missing_ok=False)
    with pytest.raises(NotFound) as missing:
        kube.get(API_VERSION, "Mailbox", "bob", namespace)
    assert missing.value.temporary


def test_list_pages_through_large_results(kube: Kube, namespace: str) -> None:
    for index in range(12):
        kube.apply(
            {**config_map(namespace, {}), "metadata": {"name": f"c{index}", "namespace": namespace}}
        )
    # Five per page: three round trips with continue tokens.
    names = {c["metadata"]["name"] for c in kube.list("v1", "ConfigMap", namespace, page_size=5)}
    assert {f"c{index}" for index in range(12)} <= names


def test_unknown_kinds_and_invalid_objects_are_clear_errors(kube: Kube, namespace: str) -> None:
    certificate = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "mail", "namespace": namespace},
        "spec": {},
    }
    with pytest.raises(NotFound, match=r"does not serve cert-manager.io/v1"):
        kube.apply(certificate)

    bad_key = config_map(namespace, {"not a key!": "x"})
    with pytest.raises(Invalid) as invalid:
        kube.apply(bad_key)
    assert not invalid.value.temporary
    assert [c.field for c in invalid.value.causes] == ["data[not a key!]"]

    bad_mailbox = mailbox(namespace, "carol")
    bad_mailbox["spec"]["address"] = "Carol@Example.COM"
    with pytest.raises(Invalid, match="must be an address local-part@domain"):
        kube.apply(bad_mailbox)

    with pytest.raises(ValueError, match=r"namespaced but has no metadata\.namespace"):
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})


# --- status ---------------------------------------------------------------------------------


def test_patch_status_writes_only_changes(kube: Kube, namespace: str) -> None:
    live = kube.apply(mailbox(namespace))
    generation = live["metadata"]["generation"]
    conditions = set_condition(
        (),
        "Ready",
        ConditionStatus.FALSE,
        "Pending",
        "first reconcile",
        generation=generation,
        now=T0,
    )
    conditions = set_condition(
        conditions,
        "ConfigApplied",
        ConditionStatus.TRUE,
        "Applied",
        "",
        generation=generation,
        now=T0,
    )
    status = MailboxStatus(
        observed_generation=generation,
        conditions=conditions,
        credentials_secret="alice-credentials",
        quota_bytes=2**30,
    )

    first = kube.patch_status("Mailbox", namespace, "alice", status)
    assert first.written
    stored = first.object["status"]
    assert [c["type"] for c in stored["conditions"]] == ["Ready", "ConfigApplied"]
    assert stored["conditions"][0]["observedGeneration"] == generation
    assert stored["credentialsSecret"] == "alice-credentials"

    second = kube.patch_status("Mailbox", namespace, "alice", status)
    assert not second.written
    assert rv(second.object) == rv(first.object)
    assert rv(kube.get(API_VERSION, "Mailbox", "alice", namespace)) == rv(first.object)

    # A new reason with the same status keeps lastTransitionTime; a field left out is removed
    # (the status passed is the whole status, not a fragment).
    later = datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    ready = set_condition(
        status.conditions,
        "Ready",
        ConditionStatus.FALSE,
        "WaitingForDNS",
        "",
        generation=generation,
        now=later,
    )
    third = kube.patch_status(
        "Mailbox",
        namespace,
        "alice",
        MailboxStatus(observed_generation=generation, conditions=ready, quota_bytes=2**30),
    )
    assert third.written
    stored = third.object["status"]
    assert stored["conditions"][0]["reason"] == "WaitingForDNS"
    assert stored["conditions"][0]["lastTransitionTime"] == "2026-11-01T12:00:00Z"
    assert "credentialsSecret" not in stored

    # A stale `observed` object (kopf's body from before our write) is caught by the
    # resourceVersion guard and re-read, not written over.
    flipped = set_condition(
        ready, "Ready", ConditionStatus.TRUE, "Reconciled", "", generation=generation, now=later
    )
    fourth = kube.patch_status(
        "Mailbox",
        namespace,
        "alice",
        MailboxStatus(observed_generation=generation, conditions=flipped, quota_bytes=2**30),
        observed=live,
    )
    assert fourth.written
    assert fourth.object["status"]["conditions"][0]["status"] == "True"
    assert fourth.object["status"]["quotaBytes"] == 2**30
    # Plain dicts work too, compared the same way.
    as_dict = fourth.object["status"]
    assert not kube.patch_status("Mailbox", namespace, "alice", as_dict).written


def test_patch_status_of_a_missing_object_is_not_found(kube: Kube, namespace: str) -> None:
    with pytest.raises(NotFound, match=r"Mailbox .*/ghost"):
        kube.patch_status("Mailbox", namespace, "ghost", MailboxStatus())


# --- events ---------------------------------------------------------------------------------


def test_events_are_recorded_and_repeats_form_a_series(
    kube: Kube, crds: ControlPlane, namespace: str
) -> None:
    box = kube.apply(mailbox(namespace))
    first = kube.emit_event(box, EventType.WARNING, "DomainMissing", "no MailDomain example.com")
    repeat = kube.emit_event(box, "Warning", "DomainMissing", "no MailDomain example.com")
    other = kube.emit_event(box, EventType.NORMAL, "Ready", "mailbox is ready", action="Publish")

    assert repeat["metadata"]["name"] == first["metadata"]["name"]
    assert repeat["series"]["count"] == 2
    assert other["metadata"]["name"] != first["metadata"]["name"]
    assert first["reportingController"] == REPORTING_CONTROLLER
    assert first["regarding"]["uid"] == box["metadata"]["uid"]

    table = crds.kubectl("get", "events", "-n", namespace).stdout
    assert "DomainMissing" in table and "mailbox/alice" in table and "mailbox is ready" in table
    described = crds.kubectl("describe", "mailbox", "alice", "-n", namespace).stdout
    events = described[described.index("Events:") :]
    assert re.search(
        r"Warning\s+DomainMissing\s+.*\(x2 over .*\)\s+letterbox.dev/operator", events
    ), events
    assert re.search(r"Normal\s+Ready\s+.*letterbox.dev/operator\s+mailbox is ready", events), (
        events
    )


def test_an_expired_event_series_starts_a_new_event(kube: Kube, namespace: str) -> None:
    box = kube.apply(mailbox(namespace))
    first = kube.emit_event(box, EventType.NORMAL, "Applied", "config applied")
    kube.delete("events.k8s.io/v1", "Event", first["metadata"]["name"], namespace)
    again = kube.emit_event(box, EventType.NORMAL, "Applied", "config applied")
    assert again["metadata"]["name"] != first["metadata"]["name"]
    assert "series" not in again


# --- secrets --------------------------------------------------------------------------------


def test_ensure_secret_never_overwrites_a_generated_value(kube: Kube, namespace: str) -> None:
    owner = kube.apply(mailbox(namespace))
    made = kube.ensure_secret(
        "alice-credentials",
        namespace,
        {"username": "alice@example.com", "password": "first"},
        owner=owner,
        labels={"app.kubernetes.io/managed-by": "letterbox"},
        immutable_keys={"password"},
    )
    assert (made.created, made.data["password"]) == (True, b"first")
    assert "first" not in repr(made)

    kept = kube.ensure_secret(
        "alice-credentials",
        namespace,
        {"username": "alice@example.com", "password": "second"},
        owner=owner,
        immutable_keys={"password"},
    )
    assert (kept.created, kept.updated, kept.data["password"]) == (False, False, b"first")
    stored = kube.get("v1", "Secret", "alice-credentials", namespace)
    assert stored["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "letterbox"}

    # A mutable key follows the caller; the password stays.
    moved = kube.ensure_secret(
        "alice-credentials",
        namespace,
        {"username": "alice@example.org", "password": "third"},
        owner=owner,
        immutable_keys={"password"},
    )
    assert moved.updated
    assert moved.data == {"username": b"alice@example.org", "password": b"first"}
    assert kube.read_secret_key(namespace, "alice-credentials", "password") == b"first"

    with pytest.raises(NotFound, match="has no key 'token'"):
        kube.read_secret_key(namespace, "alice-credentials", "token")
    with pytest.raises(NotFound, match=r"Secret .*/nothing"):
        kube.read_secret_key(namespace, "nothing", "password")


def test_ensure_secret_has_one_winner_under_concurrency(kube: Kube, namespace: str) -> None:
    def attempt(index: int) -> bytes:
        return kube.ensure_secret("race", namespace, {"password": f"candidate-{index}"}).data[
            "password"
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        winners = set(pool.map(attempt, range(16)))
    assert len(winners) == 1
    assert winners == {kube.read_secret_key(namespace, "race", "password")}


# --- asyncio --------------------------------------------------------------------------------


async def test_async_kube_runs_calls_concurrently(kube: Kube, namespace: str) -> None:
    client = AsyncKube(kube)
    applied = await asyncio.gather(
        *(client.apply(mailbox(namespace, f"user{index}")) for index in range(10))
    )
    assert len({a["metadata"]["uid"] for a in applied}) == 10
    listed = await client.list(API_VERSION, "Mailbox", namespace)
    assert len(listed) == 10
    write = await client.patch_status(
        "Mailbox", namespace, "user0", MailboxStatus(observed_generation=1)
    )
    assert write.written
