"""The DKIM key lifecycle as pure decisions over keys and the clock (no API server, no DNS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from letterbox.api.dkimkey import DkimAlgorithm, DKIMKeySpec, KeyPhase
from letterbox.reconcile import dkim
from letterbox.reconcile.dkim import KeyState
from letterbox.reconcile.status import key_active

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RSA = DkimAlgorithm.RSA_2048


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**extra: Any) -> DKIMKeySpec:
    return DKIMKeySpec.model_validate({"domain": "example.com", "selector": "lb", **extra})


def key(selector: str, phase: KeyPhase, created: float = 0, **times: float) -> KeyState:
    return KeyState(
        selector,
        RSA,
        phase,
        at(created),
        public_record=f"v=DKIM1; k=rsa; p={selector}",
        **{name: at(value) for name, value in times.items()},
    )


def phases(keys: dkim.Keys) -> list[tuple[str, KeyPhase]]:
    return [(k.selector, k.phase) for k in keys]


# --- when a new key is made -----------------------------------------------------------------

ROTATING = {"rotation": {"every": "30d", "retireAfter": "2d"}}
ACTIVE_LB = key("lb", KeyPhase.ACTIVE, 0, published_at=10, activated_at=100)


@pytest.mark.parametrize(
    ("extra", "keys", "annotation", "handled", "now", "created", "reason"),
    [
        # The first key gets the spec's selector.
        ({}, (), None, None, 0, "lb", "first key"),
        # An active key without a schedule lives until someone asks.
        ({}, (ACTIVE_LB,), None, None, 400 * 86400, None, ""),
        # The schedule counts from the active key's creation.
        (ROTATING, (ACTIVE_LB,), None, None, 30 * 86400 - 1, None, ""),
        (ROTATING, (ACTIVE_LB,), None, None, 30 * 86400, "lb-20260331", "scheduled"),
        # A new annotation value asks once; the handled value does not ask again.
        ({}, (ACTIVE_LB,), "1", None, 200, "lb-20260301", "annotation"),
        ({}, (ACTIVE_LB,), "1", "1", 200, None, ""),
        # A changed algorithm or selector in the spec rotates.
        ({"algorithm": "ed25519"}, (ACTIVE_LB,), None, None, 200, "lb-20260301", "spec"),
        ({"selector": "mx"}, (ACTIVE_LB,), None, None, 200, "mx", "spec"),
        # A rotated selector still derives from the spec's.
        (
            {},
            (key("lb-20260101", KeyPhase.ACTIVE, 0),),
            None,
            None,
            200,
            None,
            "",
        ),
        # A fresh key on its way answers a request made meanwhile: no second key.
        (
            {},
            (ACTIVE_LB, key("lb-20260301", KeyPhase.PENDING, 150)),
            "2",
            "1",
            200,
            None,
            "",
        ),
    ],
)
def test_plan_keys_makes_a_key_when_one_is_due(
    extra: dict[str, Any],
    keys: tuple[KeyState, ...],
    annotation: str | None,
    handled: str | None,
    now: float,
    created: str | None,
    reason: str,
) -> None:
    plan = dkim.plan_keys(spec(**extra), keys, annotation=annotation, handled=handled, now=at(now))
    assert (plan.create.selector if plan.create else None) == created
    if created is not None:
        assert plan.create is not None
        assert plan.create.phase is KeyPhase.PENDING and plan.create.created_at == at(now)
        assert plan.keys[-1] == plan.create
    for word in reason.split():
        assert word in plan.reason
    if annotation is not None:
        assert plan.handled == annotation  # acted on: by a new key, or by the one on its way


def test_selectors_are_never_reused() -> None:
    taken = ["lb", "lb-20260301", "lb-20260301-2"]
    assert dkim.choose_selector("lb", taken, at(0)) == "lb-20260301-3"
    assert dkim.choose_selector("lb", ["lb"], at(86400)) == "lb-20260302"
    assert dkim.derived_from("lb", "lb-20260301-3")
    assert not dkim.derived_from("lb", "lbx-20260301")


def test_retired_keys_beyond_the_history_are_dropped() -> None:
    retired = [key(f"lb-{i}", KeyPhase.RETIRED, i, retired_at=i + 1) for i in range(4)]
    plan = dkim.plan_keys(spec(), (*retired, ACTIVE_LB), annotation=None, handled=None, now=at(10))
    assert phases(plan.keys) == [
        ("lb", KeyPhase.ACTIVE),
        ("lb-2", KeyPhase.RETIRED),
        ("lb-3", KeyPhase.RETIRED),
    ]


# --- a key's way to signing and out ----------------------------------------------------------


def test_a_new_key_signs_only_once_published_and_mounted() -> None:
    """Pending -> Published (record live) -> Active (mounted long enough, config applied),
    replacing the old key in the same config, which then retires after the grace period."""
    grace = timedelta(days=2)
    mount = 90.0
    old = ACTIVE_LB
    new = key("lb-20260301", KeyPhase.PENDING, 1000)
    keys: dkim.Keys = (old, new)

    # Not live yet: the old key keeps signing, and both records are published.
    keys = dkim.mark_published(keys, [], at(1010))
    assert dkim.signing(keys, now=at(1010), mount_seconds=mount) == old
    assert [k.selector for k in dkim.to_publish(keys, grace=grace, now=at(1010))] == [
        "lb",
        "lb-20260301",
    ]
    # Live at 1020, but mounted only since 1000: still the old key.
    keys = dkim.mark_published(keys, ["lb-20260301"], at(1020))
    assert phases(keys)[1] == ("lb-20260301", KeyPhase.PUBLISHED)
    assert dkim.signing(keys, now=at(1089), mount_seconds=mount) == old
    assert dkim.next_due(spec(), keys, now=at(1020), mount_seconds=mount) == at(1090)
    # At 1090 the new key is the signer; only an applied config makes it Active.
    signer = dkim.signing(keys, now=at(1090), mount_seconds=mount)
    assert signer is not None and signer.selector == "lb-20260301"
    assert dkim.after_apply(keys, signer, applied=False, now=at(1090)) == keys
    keys = dkim.after_apply(keys, signer, applied=True, now=at(1090))
    assert phases(keys) == [("lb", KeyPhase.RETIRING), ("lb-20260301", KeyPhase.ACTIVE)]
    assert keys[1].activated_at == at(1090) and keys[0].retiring_at == at(1090)
    # Retiring: still published for the grace period, then withdrawn and retired.
    end = 1090 + grace.total_seconds()
    assert dkim.withdrawing(keys, grace=grace, now=at(end - 1)) == frozenset()
    assert len(dkim.to_publish(keys, grace=grace, now=at(end - 1))) == 2
    assert dkim.next_due(spec(**ROTATING), keys, now=at(2000), mount_seconds=mount) == at(end)
    assert dkim.withdrawing(keys, grace=grace, now=at(end)) == {"lb"}
    assert [k.selector for k in dkim.to_publish(keys, grace=grace, now=at(end))] == ["lb-20260301"]
    keys = dkim.mark_retired(keys, {"lb"}, at(end))
    assert phases(keys) == [("lb", KeyPhase.RETIRED), ("lb-20260301", KeyPhase.ACTIVE)]
    assert dkim.signing(keys, now=at(end), mount_seconds=mount) == keys[1]


@pytest.mark.parametrize(
    ("keys", "now", "expected"),
    [
        ((), 0, None),
        ((key("lb", KeyPhase.PENDING, 0),), 1000, None),  # never before its record is live
        ((key("lb", KeyPhase.PUBLISHED, 0, published_at=5),), 89, None),
        ((key("lb", KeyPhase.PUBLISHED, 0, published_at=5),), 90, "lb"),
        ((key("lb", KeyPhase.RETIRING, 0, retiring_at=5),), 1000, None),
        # Two fresh keys: the newest one that is ready.
        (
            (
                ACTIVE_LB,
                key("a", KeyPhase.PUBLISHED, 10, published_at=20),
                key("b", KeyPhase.PUBLISHED, 20, published_at=30),
            ),
            200,
            "b",
        ),
    ],
)
def test_which_key_signs(keys: tuple[KeyState, ...], now: float, expected: str | None) -> None:
    signer = dkim.signing(keys, now=at(now), mount_seconds=90)
    assert (signer.selector if signer else None) == expected


def test_a_replaced_private_key_starts_over_as_pending() -> None:
    keys = (
        ACTIVE_LB,
        key(
            "new",
            KeyPhase.PENDING,
            5,
        ),
    )
    updated, replaced = dkim.with_records(
        (ACTIVE_LB, KeyState("new", RSA, KeyPhase.PENDING, at(5))),
        {"lb": "v=DKIM1; k=rsa; p=other", "new": "v=DKIM1; k=rsa; p=new"},
    )
    assert [k.selector for k in replaced] == ["lb"]
    assert phases(updated) == [("lb", KeyPhase.PENDING), ("new", KeyPhase.PENDING)]
    assert updated[0].public_record == "v=DKIM1; k=rsa; p=other"
    assert updated[1].public_record == "v=DKIM1; k=rsa; p=new"  # filled in, not replaced
    assert keys[0].published_at is not None and updated[0].published_at is None


def test_merge_keeps_the_further_phase() -> None:
    stored = (key("lb", KeyPhase.PENDING, 0),)
    remembered = (key("lb", KeyPhase.PUBLISHED, 0, published_at=5),)
    assert dkim.merge(stored, remembered) == remembered
    assert dkim.merge(remembered, stored) == remembered  # a stale memory loses too
    # A remembered key with another record (its Secret replaced) wins whatever its phase.
    other = (KeyState("lb", RSA, KeyPhase.PENDING, at(0), "v=DKIM1; k=rsa; p=x"),)
    assert dkim.merge(remembered, other) == other


def test_status_round_trip() -> None:
    original = key("lb", KeyPhase.RETIRING, 0, published_at=5, activated_at=90, retiring_at=900)
    version = original.to_status("example-lb")
    assert version.secret_name == "example-lb" and version.retiring_at == "2026-03-01T12:15:00Z"
    assert KeyState.of_status(version) == original


@pytest.mark.parametrize(
    ("keys", "manual", "status", "reason", "words"),
    [
        ((key("lb", KeyPhase.PENDING),), True, "False", "AwaitingPublication", "status.records"),
        ((key("lb", KeyPhase.PENDING),), False, "False", "AwaitingPublication", "authoritative"),
        ((key("lb", KeyPhase.PUBLISHED),), False, "False", "Activating", "mounted"),
        ((ACTIVE_LB,), False, "True", "Signing", "selector lb"),
        (
            (ACTIVE_LB, key("lb-2", KeyPhase.PENDING, 5)),
            False,
            "True",
            "Signing",
            "rotating to lb-2",
        ),
    ],
)
def test_key_active_condition(
    keys: tuple[KeyState, ...], manual: bool, status: str, reason: str, words: str
) -> None:
    type_, got_status, got_reason, message = key_active(keys, "example.com", manual=manual)
    assert (type_, got_status.value, got_reason) == ("KeyActive", status, reason)
    assert words in message
