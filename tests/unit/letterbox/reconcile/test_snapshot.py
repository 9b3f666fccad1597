"""Parsing listed objects (`observe`): what is kept of them, and statuses shared between the
objects that have the same one."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, get_args

from pydantic import BaseModel

from letterbox.reconcile import snapshot
from letterbox.reconcile.snapshot import Kind, observe, observe_again, secret_view
from tests.unit.letterbox.reconcile.test_decide import alias, mailbox

READY: dict[str, Any] = {
    "observedGeneration": 1,
    "quotaBytes": 0,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Reconciled",
            "message": "the mailbox is in the mail pod config",
            "lastTransitionTime": "2026-01-01T00:00:05Z",
            "observedGeneration": 1,
        }
    ],
}


def listed(obj: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    """As the API server lists it: managedFields, annotations, and a status of its own copy."""
    result = copy.deepcopy(obj)
    result["metadata"].update(
        uid=f"uid-{obj['metadata']['name']}",
        resourceVersion="7",
        managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        annotations={"example.com/note": "kept"},
        finalizers=["letterbox.dev/stored-mail"],
    )
    if status is not None:
        result["status"] = copy.deepcopy(status)
    return result


def test_the_model_and_the_kept_object_hold_only_what_a_pass_reads() -> None:
    observed = observe(Kind.MAILBOX, listed(mailbox("alice", "alice@example.com"), READY))
    assert observed.model is not None
    assert observed.model.metadata.model_extra == {}  # no resourceVersion, managedFields...
    assert observed.model.metadata.annotations == {"example.com/note": "kept"}
    assert observed.model.metadata.uid == "uid-alice"
    assert set(observed.raw) == {"apiVersion", "kind", "metadata", "status"}
    assert "managedFields" not in observed.raw["metadata"]
    assert observed.resource_version == "7"
    assert observed.finalizers == ("letterbox.dev/stored-mail",)
    assert observed.raw["status"] == READY
    assert observed.model.status.conditions[0].reason == "Reconciled"


def test_objects_with_the_same_status_share_one_copy() -> None:
    first = observe(Kind.MAILBOX, listed(mailbox("bob", "bob@example.com"), READY))
    second = observe(Kind.MAILBOX, listed(mailbox("carol", "carol@example.com"), READY))
    assert first.model is not None and second.model is not None
    assert first.raw["status"] is second.raw["status"]
    assert first.model.status is second.model.status
    assert first.model.spec.address != second.model.spec.address

    later = copy.deepcopy(READY)
    later["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:01:00Z"
    third = observe(Kind.MAILBOX, listed(mailbox("dan", "dan@example.com"), later))
    assert third.model is not None
    assert third.model.status is not first.model.status
    assert str(third.model.status.conditions[0].last_transition_time) != str(
        first.model.status.conditions[0].last_transition_time
    )
    # Another kind with an equal-looking status gets its own kind's model.
    other = observe(Kind.ALIAS, listed(alias("list", "list@example.com", "bob@example.com"), {}))
    plain = observe(Kind.MAILBOX, listed(mailbox("erin", "erin@example.com"), {}))
    assert other.model is not None and plain.model is not None
    assert type(other.model.status) is not type(plain.model.status)


def test_the_shared_table_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(snapshot, "STATUS_TABLE_LIMIT", 3)
    monkeypatch.setattr(snapshot, "_statuses", {})
    for generation in range(10):
        status = {**READY, "observedGeneration": generation}
        observed = observe(Kind.MAILBOX, listed(mailbox("f", "f@example.com"), status))
        assert observed.model is not None
        assert observed.model.status.observed_generation == generation
        assert len(snapshot._statuses) <= 3


def test_a_status_the_model_rejects_is_reported_not_shared() -> None:
    broken = {"conditions": [{"type": "Ready", "status": "Maybe"}]}
    observed = observe(Kind.MAILBOX, listed(mailbox("gina", "gina@example.com"), broken))
    assert observed.model is None
    assert observed.error is not None and "status.conditions" in observed.error
    assert observed.raw["status"] == broken  # kept as stored, so a pass can replace it


def test_the_echo_of_a_status_write_reuses_the_model() -> None:
    first = observe(Kind.MAILBOX, listed(mailbox("hank", "hank@example.com"), {}))
    echo = listed(mailbox("hank", "hank@example.com"), READY)
    echo["metadata"]["resourceVersion"] = "8"
    again = observe_again(first, echo)
    assert again.model is not None and first.model is not None
    assert again.model.spec is first.model.spec  # not validated again
    assert again.model.status.conditions[0].reason == "Reconciled"
    assert again.resource_version == "8" and again.raw["status"] == READY
    assert again.model == observe(Kind.MAILBOX, echo).model

    # Anything a model reads besides the status: parsed again.
    changes: tuple[dict[str, Any], ...] = (
        {"generation": 2},
        {"labels": {"team": "a"}},
        {"annotations": {}},
        {"uid": "uid-other"},
    )
    for change in changes:
        edited = copy.deepcopy(echo)
        edited["metadata"].update(change)
        edited["spec"]["address"] = "h@example.com"
        reparsed = observe_again(first, edited)
        assert reparsed.model is not None
        assert reparsed.model.spec.address == "h@example.com", change
    invalid = observe(Kind.MAILBOX, {**echo, "spec": {"address": "not an address"}})
    assert observe_again(invalid, echo).model is not None  # no model to reuse: parsed


def test_a_secret_value_is_decoded_once() -> None:
    view = secret_view({"metadata": {"name": "p"}, "data": {"alice": "c2VjcmV0"}})
    first = view.value("alice")
    assert first == b"secret" and view.value("alice") is first
    assert view.text("alice") == "secret"
    assert view.value("bob") is None and view.text("bob") is None


def test_models_share_their_fields_set_sets_safely() -> None:
    first = observe(Kind.MAILBOX, listed(mailbox("ivan", "ivan@example.com"), READY))
    second = observe(Kind.MAILBOX, listed(mailbox("judy", "judy@example.com"), READY))
    assert first.model is not None and second.model is not None
    for a, b in ((first.model, second.model), (first.model.spec, second.model.spec)):
        assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    shared = set(first.model.spec.__pydantic_fields_set__)
    # A copy with an update gets a set of its own; the shared one is left as it was.
    copied = first.model.spec.model_copy(update={"display_name": "Ivan"})
    assert "display_name" in copied.model_fields_set
    assert second.model.spec.__pydantic_fields_set__ == shared
    # The echo of a status write (a model_copy) shares again.
    echo = listed(mailbox("ivan", "ivan@example.com"), {**READY, "quotaBytes": 5})
    echo["metadata"]["resourceVersion"] = "8"
    again = observe_again(first, echo)
    assert again.model is not None and again.model.status.quota_bytes == 5
    third = observe(
        Kind.MAILBOX, listed(mailbox("kim", "kim@example.com"), {**READY, "quotaBytes": 5})
    )
    assert third.model is not None
    assert again.model.__pydantic_fields_set__ is third.model.__pydantic_fields_set__


def test_sharing_relies_on_every_api_model_being_frozen() -> None:
    seen: set[type[BaseModel]] = set()

    def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for argument in get_args(annotation):
            yield from models_in(argument)

    pending: list[type[BaseModel]] = list(snapshot.MODELS.values())
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("frozen"), f"{model.__name__} is not frozen"
        for info in model.model_fields.values():
            pending.extend(models_in(info.annotation))
    assert len(seen) > 10
