"""Tombstones for deleted mailboxes' stored mail, and the finalizer that waits for them (pure)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from letterbox.reconcile.purge import (
    FINALIZER,
    RETENTION,
    deleting_with_mail,
    finalizer_changes,
    listed,
    tombstones,
)
from letterbox.reconcile.snapshot import SecretView
from mailpod.config import PurgedMailbox
from tests.unit.letterbox.reconcile.test_decide import T0, mailbox, snapshot

DELETED = {"deletionTimestamp": "2026-01-01T01:00:00Z"}


def ready(obj: dict[str, Any], status: str = "True") -> dict[str, Any]:
    condition = {
        "type": "Ready",
        "status": status,
        "reason": "Reconciled",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    return {**obj, "status": {"observedGeneration": 1, "conditions": [condition]}}


def delete_policy(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "spec": {**obj["spec"], "deletionPolicy": "Delete"}}


def test_only_a_deleting_mailbox_that_owned_its_address_takes_its_mail() -> None:
    snap = snapshot(
        ready(delete_policy(mailbox("gone", "gone@example.com", **DELETED))),
        ready(mailbox("retained", "kept@example.com", **DELETED)),  # Retain
        delete_policy(mailbox("dup", "dup@example.com", **DELETED)),  # never Ready
        ready(delete_policy(mailbox("alive", "alive@example.com"))),  # not deleting
    )
    assert [m.metadata.name for m in deleting_with_mail(snap.mailboxes)] == ["gone"]


def test_tombstones_carry_over_expire_and_yield_to_live_mailboxes() -> None:
    snap = snapshot(ready(delete_policy(mailbox("bob", "Bob@example.com", **DELETED))))
    deleting = deleting_with_mail(snap.mailboxes)
    old = PurgedMailbox(address="old@example.com", since=T0 - RETENTION - timedelta(seconds=1))
    recent = PurgedMailbox(address="carol@example.com", since=T0 - timedelta(days=1))
    back = PurgedMailbox(address="dave@example.com", since=T0 - timedelta(days=1))
    result = tombstones([old, recent, back], deleting, ["DAVE@example.com"], now=T0)
    assert result == (PurgedMailbox(address="Bob@example.com", since=T0), recent)
    # Listed again on the next pass: the first request's time is kept.
    assert tombstones(result, deleting, [], now=T0 + timedelta(hours=1)) == result
    # A new Mailbox with the address: never purged, even while the old one is being deleted.
    assert tombstones(result, deleting, ["bob@example.com"], now=T0) == (recent,)


def test_listed_reads_the_applied_settings_secret() -> None:
    entry = {"address": "bob@example.com", "since": "2026-01-01T00:00:00Z"}
    document = json.dumps({"purged_mailboxes": [entry]}).encode()
    secret = SecretView(
        {
            "metadata": {"name": "mailpod-config"},
            "data": {"config.json": base64.b64encode(document)},
        }
    )
    assert listed(secret) == (PurgedMailbox(address="bob@example.com", since=T0),)
    assert listed(None) == ()
    garbage = SecretView({"metadata": {"name": "x"}, "data": {"config.json": "bm90IGpzb24="}})
    assert listed(garbage) == ()


def test_finalizer_follows_the_policy_and_is_released_after_the_config() -> None:
    others = ["example.com/other"]
    snap = snapshot(
        delete_policy(mailbox("new", "new@example.com")),
        mailbox("relaxed", "relaxed@example.com", finalizers=[FINALIZER, *others]),
        delete_policy(mailbox("has", "has@example.com", finalizers=[FINALIZER])),
        delete_policy(
            mailbox("going", "going@example.com", finalizers=[*others, FINALIZER], **DELETED)
        ),
    )
    held = finalizer_changes(snap.mailboxes, config_applied=False)
    assert {(c.observed.key.name, c.finalizers, c.released) for c in held} == {
        ("new", (FINALIZER,), False),
        ("relaxed", tuple(others), False),
    }
    released = finalizer_changes(snap.mailboxes, config_applied=True)
    assert ("going", tuple(others), True) in {
        (c.observed.key.name, c.finalizers, c.released) for c in released
    }
