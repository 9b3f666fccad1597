"""Reconcile decisions over gathered snapshots: pure functions, no API server, no fakes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from letterbox.api.conditions import find_condition
from letterbox.api.meta import API_VERSION, ConditionStatus
from letterbox.reconcile.decide import Reason, Verdict, apply_failed, decide
from letterbox.reconcile.snapshot import Kind, ObjectKey, Snapshot
from letterbox.reconcile.status import desired_status, transition

NS = "mail"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def obj(
    kind: Kind, name: str, spec: dict[str, Any], *, age: int = 0, **meta: Any
) -> dict[str, Any]:
    """A listed object; `age` seconds after T0 (larger is newer)."""
    created = (T0 + timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata = {"name": name, "namespace": NS, "creationTimestamp": created, "generation": 1}
    return {
        "apiVersion": API_VERSION,
        "kind": kind.value,
        "metadata": {**metadata, **meta},
        "spec": spec,
    }


def domain(name: str = "example-com", domain: str = "example.com", **kw: Any) -> dict[str, Any]:
    return obj(Kind.MAIL_DOMAIN, name, {"domain": domain}, **kw)


def mailbox(name: str, address: str, **kw: Any) -> dict[str, Any]:
    return obj(Kind.MAILBOX, name, {"address": address}, **kw)


def alias(name: str, address: str, *destinations: str, **kw: Any) -> dict[str, Any]:
    return obj(Kind.ALIAS, name, {"address": address, "destinations": list(destinations)}, **kw)


def snapshot(*objects: dict[str, Any], secrets: tuple[dict[str, Any], ...] = ()) -> Snapshot:
    by_kind: dict[Kind, list[dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(Kind(o["kind"]), []).append(o)
    return Snapshot.of(NS, by_kind, secrets)


def key(kind: Kind, name: str) -> ObjectKey:
    return ObjectKey(kind, NS, name)


def test_everything_valid_is_accepted() -> None:
    decisions = decide(
        snapshot(
            domain(),
            mailbox("alice", "alice@example.com"),
            alias("sales", "sales@example.com", "alice@example.com"),
            obj(Kind.DKIM_KEY, "rsa", {"domain": "example.com", "selector": "lb"}),
        )
    )
    assert all(v.accepted and v.reason is Reason.RECONCILED for v in decisions.verdicts.values())
    assert len(decisions.verdicts) == 4
    assert [m.spec.address for m in decisions.mailboxes] == ["alice@example.com"]


def test_missing_domain_rejects_only_that_resource() -> None:
    decisions = decide(
        snapshot(
            domain(),
            mailbox("alice", "alice@example.com"),
            mailbox("eve", "eve@example.org"),
            obj(Kind.DKIM_KEY, "org", {"domain": "example.org", "selector": "lb"}),
        )
    )
    eve = decisions.verdict(key(Kind.MAILBOX, "eve"))
    assert (eve.accepted, eve.reason) == (False, Reason.DOMAIN_NOT_FOUND)
    assert "example.org" in eve.message
    assert decisions.verdict(key(Kind.DKIM_KEY, "org")).reason is Reason.DOMAIN_NOT_FOUND
    assert decisions.verdict(key(Kind.MAILBOX, "alice")).accepted
    assert [m.metadata.name for m in decisions.mailboxes] == ["alice"]


def test_duplicate_address_older_wins_across_kinds() -> None:
    decisions = decide(
        snapshot(
            domain(),
            alias("old-alias", "team@example.com", "alice@example.com", age=1),
            mailbox("alice", "alice@example.com"),
            mailbox("new-team", "team@example.com", age=5),
            mailbox("alice-again", "alice@example.com", age=9),
        )
    )
    newer = decisions.verdict(key(Kind.MAILBOX, "new-team"))
    assert (newer.accepted, newer.reason) == (False, Reason.DUPLICATE_ADDRESS)
    assert "Alias old-alias" in newer.message
    assert decisions.verdict(key(Kind.MAILBOX, "alice-again")).reason is Reason.DUPLICATE_ADDRESS
    assert decisions.verdict(key(Kind.ALIAS, "old-alias")).accepted
    assert decisions.owners["team@example.com"] == key(Kind.ALIAS, "old-alias")


def test_same_second_is_broken_by_name() -> None:
    decisions = decide(
        snapshot(domain(), mailbox("b", "x@example.com"), mailbox("a", "x@example.com"))
    )
    assert decisions.verdict(key(Kind.MAILBOX, "a")).accepted
    assert not decisions.verdict(key(Kind.MAILBOX, "b")).accepted


def test_alias_loop_rejects_the_cycle_only() -> None:
    decisions = decide(
        snapshot(
            domain(),
            mailbox("alice", "alice@example.com"),
            alias("a", "a@example.com", "b@example.com"),
            alias("b", "b@example.com", "c@example.com", "alice@example.com"),
            alias("c", "c@example.com", "a@example.com"),
            alias("feeder", "d@example.com", "a@example.com"),
        )
    )
    for name in ("a", "b", "c"):
        verdict = decisions.verdict(key(Kind.ALIAS, name))
        assert (verdict.accepted, verdict.reason) == (False, Reason.ALIAS_LOOP)
        assert "a@example.com -> b@example.com -> c@example.com" in verdict.message
    assert decisions.verdict(key(Kind.ALIAS, "feeder")).accepted
    assert decisions.verdict(key(Kind.MAILBOX, "alice")).accepted


def test_catch_all_to_an_unknown_address_of_its_own_domain_is_a_loop() -> None:
    decisions = decide(snapshot(domain(), alias("all", "@example.com", "nobody@example.com")))
    assert decisions.verdict(key(Kind.ALIAS, "all")).reason is Reason.ALIAS_LOOP


def test_missing_password_secret_is_temporary() -> None:
    with_ref = obj(
        Kind.MAILBOX,
        "bob",
        {"address": "bob@example.com", "password": {"secretRef": {"name": "bob-password"}}},
    )
    decisions = decide(snapshot(domain(), with_ref))
    verdict = decisions.verdict(key(Kind.MAILBOX, "bob"))
    assert (verdict.reason, verdict.temporary) == (Reason.SECRET_NOT_FOUND, True)
    secret = {
        "metadata": {"name": "bob-password"},
        "data": {"password": base64.b64encode(b"pw").decode()},
    }
    assert (
        decide(snapshot(domain(), with_ref, secrets=(secret,)))
        .verdict(key(Kind.MAILBOX, "bob"))
        .accepted
    )


def test_invalid_spec_and_deleting_objects() -> None:
    bad = obj(Kind.MAILBOX, "bad", {"address": "not-an-address"})
    gone = mailbox("gone", "gone@example.com", deletionTimestamp="2026-01-02T00:00:00Z")
    decisions = decide(snapshot(domain(), bad, gone))
    verdict = decisions.verdict(key(Kind.MAILBOX, "bad"))
    assert (verdict.reason, verdict.temporary) == (Reason.INVALID_SPEC, False)
    assert "spec.address" in verdict.message
    assert key(Kind.MAILBOX, "gone") not in decisions.verdicts
    assert decisions.mailboxes == ()


def test_duplicate_domain_and_selector() -> None:
    decisions = decide(
        snapshot(
            domain("first"),
            domain("second", age=3),
            obj(Kind.DKIM_KEY, "k1", {"domain": "example.com", "selector": "lb"}),
            obj(Kind.DKIM_KEY, "k2", {"domain": "example.com", "selector": "lb"}, age=2),
        )
    )
    assert decisions.verdict(key(Kind.MAIL_DOMAIN, "second")).reason is Reason.DUPLICATE_DOMAIN
    assert decisions.verdict(key(Kind.DKIM_KEY, "k2")).reason is Reason.DUPLICATE_SELECTOR


def test_conditions_transition_only_on_status_change() -> None:
    eve = mailbox("eve", "eve@example.org")
    snap = snapshot(domain(), eve)
    verdict = decide(snap).verdict(key(Kind.MAILBOX, "eve"))
    first = desired_status(snap.mailboxes[0], verdict, now=T0)
    assert [c.type for c in first.conditions] == ["Ready", "ConfigApplied"]
    ready = find_condition(first.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.observed_generation) == (
        ConditionStatus.FALSE,
        "DomainNotFound",
        1,
    )
    assert transition(snap.mailboxes[0], verdict) is not None

    # Stored, seen again an hour later with the same verdict: same transition time, no event.
    stored = {**eve, "status": first.model_dump(mode="json", by_alias=True, exclude_none=True)}
    snap = snapshot(domain(), stored)
    again = desired_status(snap.mailboxes[0], verdict, now=T0 + timedelta(hours=1))
    assert again == first
    assert transition(snap.mailboxes[0], verdict) is None

    # The domain appears: Ready flips, and only then does lastTransitionTime move.
    snap = snapshot(domain(), domain("org", "example.org"), stored)
    fixed = decide(snap).verdict(key(Kind.MAILBOX, "eve"))
    later = T0 + timedelta(hours=2)
    now_ready = find_condition(
        desired_status(snap.mailboxes[0], fixed, now=later).conditions, "Ready"
    )
    assert now_ready is not None
    assert (now_ready.status, now_ready.reason, now_ready.last_transition_time) == (
        ConditionStatus.TRUE,
        "Reconciled",
        later,
    )
    change = transition(snap.mailboxes[0], fixed)
    assert change is not None and change.ready


def test_first_ready_is_no_event_but_failures_and_recoveries_are() -> None:
    alice = mailbox("alice", "alice@example.com")
    snap = snapshot(domain(), alice)
    verdict = decide(snap).verdict(key(Kind.MAILBOX, "alice"))
    assert verdict.accepted
    assert transition(snap.mailboxes[0], verdict) is None  # new and Ready: the condition says it
    failed = desired_status(
        snap.mailboxes[0], Verdict(False, Reason.APPLY_FAILED, "refused", True), now=T0
    )
    stored = {**alice, "status": failed.model_dump(mode="json", by_alias=True, exclude_none=True)}
    recovered = transition(snapshot(domain(), stored).mailboxes[0], verdict)
    assert recovered is not None and recovered.ready and recovered.reason == "Reconciled"


def test_apply_failure_marks_domains_and_what_the_pods_do_not_have_yet() -> None:
    served = mailbox("served", "served@example.com")
    snap = snapshot(domain(), served, mailbox("new", "new@example.com"))
    decisions = decide(snap)
    ready = desired_status(
        snap.mailboxes[0], decisions.verdict(key(Kind.MAILBOX, "served")), now=T0
    )
    stored = {**served, "status": ready.model_dump(mode="json", by_alias=True, exclude_none=True)}
    snap = snapshot(domain(), stored, mailbox("new", "new@example.com"))
    decisions = decide(snap)

    after_config = apply_failed(snap, decisions, "Service refused", config_applied=True)
    assert after_config.verdict(key(Kind.MAIL_DOMAIN, "example-com")).reason is Reason.APPLY_FAILED
    assert after_config.verdict(key(Kind.MAILBOX, "new")).accepted
    assert after_config.verdict(key(Kind.MAILBOX, "served")).accepted

    no_config = apply_failed(snap, decisions, "shard refused", config_applied=False)
    failed = no_config.verdict(key(Kind.MAILBOX, "new"))
    assert (failed.accepted, failed.reason, failed.message, failed.temporary) == (
        False,
        Reason.APPLY_FAILED,
        "shard refused",
        True,
    )
    assert no_config.verdict(key(Kind.MAILBOX, "served")).accepted  # the pods still have it
    assert no_config.mailboxes == decisions.mailboxes  # what the next try renders is unchanged
