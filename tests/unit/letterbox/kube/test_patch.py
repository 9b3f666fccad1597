from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from letterbox.api.conditions import set_condition
from letterbox.api.mailbox import MailboxStatus
from letterbox.api.meta import ConditionStatus
from letterbox.kube.patch import drop_nulls, merge_patch, same_status, status_json

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, {"a": {"c": None}}),
        ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}),  # lists are replaced whole
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
    ],
)
def test_merge_patch_turns_old_into_new(old: Any, new: Any, patch: Any) -> None:
    assert merge_patch(old, new) == patch
    assert apply_merge_patch(old, patch) == new


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 applied, to check the diff round-trips."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_drop_nulls_is_recursive() -> None:
    assert drop_nulls({"a": None, "b": {"c": None, "d": [{"e": None}]}}) == {"b": {"d": [{}]}}


def _status() -> MailboxStatus:
    conditions = set_condition(
        (), "Ready", ConditionStatus.TRUE, "Reconciled", "ok", generation=2, now=T0
    )
    return MailboxStatus(observed_generation=2, conditions=conditions, quota_bytes=10)


def test_status_json_is_camel_case_without_nulls() -> None:
    assert status_json(_status()) == {
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "ok",
                "lastTransitionTime": "2026-11-01T00:00:00Z",
                "observedGeneration": 2,
            }
        ],
        "quotaBytes": 10,
    }


def test_same_status_ignores_spelling_of_equal_values() -> None:
    stored = status_json(_status())
    stored["conditions"][0]["lastTransitionTime"] = "2026-11-01T00:00:00+00:00"
    del stored["conditions"][0]["message"]  # not the default: differs
    assert not same_status(stored, _status())
    stored["conditions"][0]["message"] = "ok"
    assert same_status(stored, _status())


def test_same_status_treats_an_unreadable_stored_status_as_different() -> None:
    assert not same_status({"conditions": "garbage"}, _status())
    assert not same_status({}, _status())


def test_same_status_for_plain_dicts() -> None:
    assert same_status({"a": 1}, {"a": 1, "b": None})
    assert not same_status({"a": 1}, {"a": 2})
