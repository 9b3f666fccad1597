from __future__ import annotations

from datetime import UTC, datetime, timedelta

from letterbox.api.conditions import find_condition, set_condition
from letterbox.api.meta import ConditionStatus

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_ready_is_always_first() -> None:
    conditions = set_condition(
        (), "DNSPublished", ConditionStatus.TRUE, "Published", "", generation=1, now=T0
    )
    conditions = set_condition(
        conditions, "Ready", ConditionStatus.FALSE, "Pending", "", generation=1, now=T0
    )
    assert [c.type for c in conditions] == ["Ready", "DNSPublished"]


def test_transition_time_only_moves_on_a_real_transition() -> None:
    first = set_condition(
        (), "Ready", ConditionStatus.FALSE, "Pending", "wait", generation=1, now=T0
    )
    same = set_condition(
        first, "Ready", ConditionStatus.FALSE, "StillPending", "more", generation=2, now=T1
    )
    ready = find_condition(same, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0
    assert (ready.reason, ready.message, ready.observed_generation) == ("StillPending", "more", 2)

    flipped = set_condition(
        same, "Ready", ConditionStatus.TRUE, "Reconciled", "", generation=2, now=T1
    )
    ready = find_condition(flipped, "Ready")
    assert ready is not None and ready.last_transition_time == T1


def test_other_conditions_are_untouched() -> None:
    conditions = set_condition(
        (), "KeyActive", ConditionStatus.TRUE, "Active", "", generation=1, now=T0
    )
    conditions = set_condition(
        conditions, "Ready", ConditionStatus.TRUE, "Ok", "", generation=3, now=T1
    )
    key = find_condition(conditions, "KeyActive")
    assert key is not None and key.observed_generation == 1 and key.last_transition_time == T0
