"""The informer store: events keep it current, a listing replaces it, and events that arrive
while a listing is under way are applied after it in their order."""

from __future__ import annotations

from typing import Any

from letterbox.reconcile.snapshot import Kind, observe, secret_view
from letterbox.reconcile.store import SECRETS, ObjectStore, needs_pass
from tests.unit.letterbox.reconcile.test_decide import domain, mailbox


def version(obj: dict[str, Any], rv: str, **spec: Any) -> dict[str, Any]:
    return {
        **obj,
        "metadata": {**obj["metadata"], "resourceVersion": rv},
        "spec": {**obj["spec"], **spec},
    }


def secret(name: str, rv: str, value: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, "data": {"password": value}}


def addresses(store: ObjectStore) -> dict[str, str]:
    return {
        o.key.name: o.model.spec.address
        for o in store.snapshot("mail").mailboxes
        if o.model is not None
    }


def test_events_add_change_and_delete() -> None:
    store = ObjectStore()
    alice = mailbox("alice", "alice@example.com")
    store.event(Kind.MAILBOX.value, None, version(alice, "1"))
    store.event(Kind.MAIL_DOMAIN.value, "ADDED", version(domain(), "2"))
    store.event(SECRETS, "ADDED", secret("alice-password", "3", "cw=="))
    store.event(Kind.MAILBOX.value, "MODIFIED", version(alice, "4", address="alicia@example.com"))
    snapshot = store.snapshot("mail")
    assert addresses(store) == {"alice": "alicia@example.com"}
    assert [d.key.name for d in snapshot.domains] == ["example-com"]
    assert snapshot.secrets["alice-password"].text("password") == "s"
    store.event(Kind.MAILBOX.value, "DELETED", version(alice, "5"))
    store.event(SECRETS, "DELETED", secret("alice-password", "6"))
    assert addresses(store) == {}
    assert store.snapshot("mail").secrets == {}


def test_an_unchanged_resource_version_is_not_parsed_again() -> None:
    store = ObjectStore()
    bob = version(mailbox("bob", "bob@example.com"), "7")
    store.event(Kind.MAILBOX.value, None, bob)
    first = store.snapshot("mail").mailboxes[0]
    store.event(Kind.MAILBOX.value, "MODIFIED", bob)
    assert store.snapshot("mail").mailboxes[0] is first


def test_a_listing_replaces_the_store_and_later_events_win() -> None:
    store = ObjectStore()
    ghost = version(mailbox("ghost", "ghost@example.com"), "1")
    store.event(Kind.MAILBOX.value, "ADDED", ghost)  # deleted while no watch saw it
    assert not store.listed
    store.begin_listing()
    carol = mailbox("carol", "carol@example.com")
    # During the listing: an older event (delivered late), then the newest one.
    store.event(Kind.MAILBOX.value, "MODIFIED", version(carol, "9", address="old@example.com"))
    store.event(Kind.MAILBOX.value, "MODIFIED", version(carol, "12", address="new@example.com"))
    listed = [observe(Kind.MAILBOX, version(carol, "10", address="listed@example.com"))]
    store.finish_listing({Kind.MAILBOX: listed}, [secret_view(secret("s", "11"))])
    assert store.listed
    assert addresses(store) == {"carol": "new@example.com"}  # no ghost, the newest event
    assert set(store.snapshot("mail").secrets) == {"s"}

    store.begin_listing()
    store.event(Kind.MAILBOX.value, "ADDED", version(mailbox("dan", "dan@example.com"), "13"))
    store.abandon_listing()  # a failed listing: the events are kept, the old content too
    assert addresses(store) == {"carol": "new@example.com", "dan": "dan@example.com"}


def test_a_full_listing_reuses_what_the_store_already_parsed() -> None:
    store = ObjectStore()
    erin = version(mailbox("erin", "erin@example.com"), "20")
    store.event(Kind.MAILBOX.value, "ADDED", erin)
    known = store.snapshot("mail").mailboxes[0]
    assert store.observe(Kind.MAILBOX, erin) is known
    newer = store.observe(Kind.MAILBOX, version(erin, "21", address="e@example.com"))
    assert newer is not known and newer.model is not None
    assert newer.model.spec.address == "e@example.com"


def test_events_prepared_in_another_thread_are_journalled_as_parsed() -> None:
    store = ObjectStore()
    frank = version(mailbox("frank", "frank@example.com"), "30")
    store.event(Kind.MAILBOX.value, "ADDED", frank)
    known = store.snapshot("mail").mailboxes[0]
    assert store.prepare(Kind.MAILBOX.value, frank) is known  # re-delivered: not parsed again
    store.begin_listing()
    changed = store.prepare(Kind.MAILBOX.value, version(frank, "31", address="f@example.com"))
    gone = store.prepare(SECRETS, secret("frank-password", "32"))
    store.put(Kind.MAILBOX.value, "MODIFIED", changed)
    store.put(SECRETS, "DELETED", gone)
    store.finish_listing(
        {Kind.MAILBOX: [known]}, [secret_view(secret("frank-password", "29", "cw=="))]
    )
    assert addresses(store) == {"frank": "f@example.com"}
    assert store.snapshot("mail").secrets == {}


def test_a_pass_is_needed_for_changes_not_for_echoes_of_our_status_writes() -> None:
    def prepared(obj: dict[str, Any]) -> Any:
        return ObjectStore().prepare(Kind.MAILBOX.value, obj)

    fresh = prepared(version(mailbox("gail", "gail@example.com"), "40"))
    settled = prepared({**version(mailbox("gail", "gail@example.com"), "41"), "status": {
        "observedGeneration": 1
    }})  # fmt: skip
    edited = prepared(
        {
            **version(mailbox("gail", "gail@example.com"), "42"),
            "metadata": {**mailbox("gail", "g@example.com")["metadata"], "generation": 2},
            "status": {"observedGeneration": 1},
        }
    )
    deleting = prepared(
        {
            **version(mailbox("gail", "gail@example.com"), "43"),
            "metadata": {
                **mailbox("gail", "gail@example.com")["metadata"],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": {"observedGeneration": 1},
        }
    )
    never = lambda name: False  # noqa: E731
    assert needs_pass("ADDED", fresh, never)  # no status yet
    assert not needs_pass("MODIFIED", settled, never)  # the echo of our write
    assert needs_pass("MODIFIED", edited, never)  # a new generation
    assert needs_pass("MODIFIED", deleting, never)
    assert needs_pass("DELETED", settled, never)
    password = secret_view(secret("gail-password", "44"))
    assert needs_pass("MODIFIED", password, lambda name: name == "gail-password")
    assert not needs_pass("MODIFIED", password, never)
