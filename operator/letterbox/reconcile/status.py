"""The status each resource should have after a pass, and the events its transitions deserve
(pure: the clock is an argument)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from letterbox.api.conditions import READY, find_condition, set_condition
from letterbox.api.dkimkey import KeyPhase
from letterbox.api.meta import Condition, ConditionStatus, Status
from letterbox.reconcile import dkim
from letterbox.reconcile.decide import Reason, Verdict
from letterbox.reconcile.snapshot import Kind, Observed

CONFIG_APPLIED = "ConfigApplied"
KEY_ACTIVE = "KeyActive"


@dataclass(frozen=True)
class Transition:
    """A change of Ready worth an Event (`kubectl describe` shows the story)."""

    observed: Observed[Any]
    ready: bool
    reason: str
    message: str


def _previous(observed: Observed[Any]) -> Status:
    """The stored status, read leniently: a status we cannot parse is replaced, not fatal."""
    if observed.model is not None:
        status: Status = observed.model.status
        return status
    try:
        return Status.model_validate(observed.raw.get("status") or {})
    except ValidationError:
        return Status()


def key_active(
    keys: dkim.Keys, domain: str, *, manual: bool
) -> tuple[str, ConditionStatus, str, str]:
    """The KeyActive condition of a DKIMKey: which selector signs, or what signing waits for."""
    signer = dkim.active(keys)
    latest = dkim.newest(keys)
    coming = (
        latest
        if latest is not None
        and latest.phase
        in (
            KeyPhase.PENDING,
            KeyPhase.PUBLISHED,
        )
        else None
    )

    def waiting(key: dkim.KeyState) -> str:
        name = f"{key.selector}._domainkey.{domain}"
        if key.phase is KeyPhase.PENDING:
            where = "publish it from the MailDomain's status.records; " if manual else ""
            return (
                f"TXT {name} is not yet answered by every authoritative server of the zone "
                f"({where}signing starts once it is)"
            )
        return f"TXT {name} is live; the key signs once the mail pods have it mounted"

    if signer is not None:
        message = f"the mail pods sign with selector {signer.selector}"
        if coming is not None:
            message += f"; rotating to {coming.selector}: {waiting(coming)}"
        return (KEY_ACTIVE, ConditionStatus.TRUE, "Signing", message)
    if coming is not None:
        reason = "AwaitingPublication" if coming.phase is KeyPhase.PENDING else "Activating"
        return (KEY_ACTIVE, ConditionStatus.FALSE, reason, waiting(coming))
    return (KEY_ACTIVE, ConditionStatus.FALSE, "NoKey", "no key is published yet")


def ready_message(kind: Kind, verdict: Verdict) -> str:
    if not verdict.accepted:
        return verdict.message
    return {
        Kind.MAIL_DOMAIN: "the domain is served by the mail pods",
        Kind.MAILBOX: "the mailbox is in the mail pod config",
        Kind.ALIAS: "the alias is in the mail pod config",
        Kind.DKIM_KEY: "the key is generated; KeyActive says when the mail pods sign with it",
    }[kind]


def conditions_for(
    observed: Observed[Any],
    verdict: Verdict,
    *,
    now: datetime,
    extra: tuple[tuple[str, ConditionStatus, str, str], ...] = (),
) -> tuple[Condition, ...]:
    """Ready and ConfigApplied (plus `extra` conditions) over the stored ones, with
    lastTransitionTime moving only on a real transition."""
    generation = observed.generation
    conditions = _previous(observed).conditions
    status = ConditionStatus.TRUE if verdict.accepted else ConditionStatus.FALSE
    conditions = set_condition(
        conditions,
        READY,
        status,
        verdict.reason.value,
        ready_message(observed.key.kind, verdict),
        generation=generation,
        now=now,
    )
    applied_message = (
        "in the applied mail pod config"
        if verdict.accepted
        else "left out of the mail pod config (see Ready)"
    )
    conditions = set_condition(
        conditions,
        CONFIG_APPLIED,
        status,
        "Applied" if verdict.accepted else verdict.reason.value,
        applied_message,
        generation=generation,
        now=now,
    )
    for type_, cond_status, reason, message in extra:
        conditions = set_condition(
            conditions, type_, cond_status, reason, message, generation=generation, now=now
        )
    return conditions


def desired_status(
    observed: Observed[Any],
    verdict: Verdict,
    *,
    now: datetime,
    fields: Mapping[str, Any] | None = None,
    extra: tuple[tuple[str, ConditionStatus, str, str], ...] = (),
) -> Status:
    """The whole status to write: the kind's status model with `fields` (e.g. records,
    credentialsSecret) and the conditions. An object the model rejects gets the common Status."""
    conditions = conditions_for(observed, verdict, now=now, extra=extra)
    base: Status = observed.model.status if observed.model is not None else Status()
    model = type(base)
    return model.model_validate(
        {
            **(fields or {}),
            "observed_generation": observed.generation,
            "conditions": conditions,
        }
    )


def transition(observed: Observed[Any], verdict: Verdict) -> Transition | None:
    """An event when Ready changes status or reason (not on a message-only change, which would
    flood events when, say, an older duplicate is renamed).

    Becoming Ready for the first time is not an event: the Ready condition records it, and
    10,000 Mailboxes applied at once would otherwise cost 10,000 Event writes on top of their
    10,000 status writes (doubling the API server's work, and the time until all are Ready).
    Every failure is an event, and so is the recovery from one."""
    previous = find_condition(_previous(observed).conditions, READY)
    status = ConditionStatus.TRUE if verdict.accepted else ConditionStatus.FALSE
    if (
        previous is not None
        and previous.status == status
        and previous.reason == verdict.reason.value
    ):
        return None
    if verdict.accepted and (previous is None or previous.status == ConditionStatus.UNKNOWN):
        return None
    return Transition(
        observed,
        verdict.accepted,
        verdict.reason.value,
        ready_message(observed.key.kind, verdict),
    )


__all__ = [
    "CONFIG_APPLIED",
    "KEY_ACTIVE",
    "Reason",
    "Transition",
    "conditions_for",
    "desired_status",
    "key_active",
    "ready_message",
    "transition",
]
