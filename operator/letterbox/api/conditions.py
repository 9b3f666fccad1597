"""Setting conditions with cert-manager / metav1 semantics.

`lastTransitionTime` changes only when `status` changes; reason, message and observedGeneration
are updated in place; conditions are keyed by type and `Ready` always comes first.
"""

from __future__ import annotations

from datetime import datetime

from letterbox.api.meta import Condition, ConditionStatus

READY = "Ready"


def set_condition(
    conditions: tuple[Condition, ...],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> tuple[Condition, ...]:
    """The conditions with `type_` set; the others untouched."""
    previous = next((c for c in conditions if c.type == type_), None)
    transition = (
        previous.last_transition_time
        if previous is not None and previous.status == status and previous.last_transition_time
        else now
    )
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    return order_conditions((*others, updated))


def order_conditions(conditions: tuple[Condition, ...]) -> tuple[Condition, ...]:
    """`Ready` first, then the rest in the order they were first set."""
    return tuple(sorted(conditions, key=lambda c: c.type != READY))


def find_condition(conditions: tuple[Condition, ...], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
