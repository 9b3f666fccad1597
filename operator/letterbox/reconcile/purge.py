"""Which deleted mailboxes' stored mail the mail pods are to remove (pure).

Issue 8 §6: a Mailbox with `deletionPolicy: Delete` takes its stored mail with it. The operator
cannot reach the mail volumes, so the pod config carries tombstones (`purged_mailboxes`) and
each pod removes the listed Maildirs from its own volume (`mailpod.storage.purge`). Retain is
the safe default: only a listed address is ever removed.

- A Mailbox being deleted (its finalizer holds it) with deletionPolicy Delete is listed, if its
  mail is its own: it was Ready, i.e. it held the address in the config. A duplicate that never
  owned the address must not take the mail of the mailbox that did.
- The live config is where tombstones persist once the finalizer lets the Mailbox go, so each
  pass carries the listed ones forward from the applied settings Secret.
- The finalizer `FINALIZER` is on exactly the Mailboxes with deletionPolicy Delete, set and
  removed by the namespace pass (not by kopf, whose per-object handlers would keep a diff-base
  of every Mailbox). A deleting Mailbox is let go once a config without it, and with its
  tombstone, is applied.
- A tombstone is dropped when its address is a mailbox again (the config refuses both: new mail
  must never be removed) and after `RETENTION`, by when every pod has loaded it (a pod loads
  its config on start and follows it live; one down for longer keeps that mail).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from letterbox.api.conditions import READY, find_condition
from letterbox.api.mailbox import DeletionPolicy, Mailbox
from letterbox.api.meta import GROUP, ConditionStatus
from letterbox.reconcile.snapshot import Observed, SecretView
from letterbox.render.podconfig_secrets import SETTINGS_KEY
from mailpod import config as pod

RETENTION = timedelta(days=30)
# Not kopf's finalizer (settings.kopf.finalizer): kopf removes its own from any object it has
# no deletion handler for.
FINALIZER = f"{GROUP}/delete-stored-mail"


def listed(settings_secret: SecretView | None) -> tuple[pod.PurgedMailbox, ...]:
    """The tombstones in the applied settings Secret (none if there is none or it is unreadable:
    the worst case is mail kept, never mail removed)."""
    if settings_secret is None:
        return ()
    try:
        document = json.loads(settings_secret.text(SETTINGS_KEY) or "{}")
        return tuple(
            pod.PurgedMailbox.model_validate(entry)
            for entry in document.get("purged_mailboxes") or ()
        )
    except (ValueError, ValidationError, AttributeError):
        return ()


def _owned_its_address(observed: Observed[Mailbox]) -> bool:
    model = observed.model
    if model is None:
        return False
    ready = find_condition(model.status.conditions, READY)
    return ready is not None and ready.status == ConditionStatus.TRUE


def deleting_with_mail(mailboxes: Iterable[Observed[Mailbox]]) -> list[Mailbox]:
    """Mailboxes being deleted whose stored mail goes with them."""
    return [
        observed.model
        for observed in mailboxes
        if observed.deleting
        and observed.model is not None
        and observed.model.spec.deletion_policy is DeletionPolicy.DELETE
        and _owned_its_address(observed)
    ]


def tombstones(
    previous: Sequence[pod.PurgedMailbox],
    deleting: Iterable[Mailbox],
    mailbox_addresses: Iterable[str],
    *,
    now: datetime,
) -> tuple[pod.PurgedMailbox, ...]:
    """The `purged_mailboxes` of the next config: `previous` ones still due, plus `deleting`,
    minus any address that is a mailbox in the config (compared as the Maildir names are, in
    lower case), sorted by address."""
    in_use = {address.lower() for address in mailbox_addresses}
    due: dict[str, pod.PurgedMailbox] = {}
    for entry in previous:
        if now - entry.since <= RETENTION:
            due.setdefault(entry.address.lower(), entry)
    for mailbox in deleting:
        address = mailbox.spec.address
        due.setdefault(address.lower(), pod.PurgedMailbox(address=address, since=now))
    return tuple(entry for key, entry in sorted(due.items()) if key not in in_use)


@dataclass(frozen=True)
class FinalizerChange:
    observed: Observed[Any]
    finalizers: tuple[str, ...]
    """The object's new finalizer list."""
    released: bool
    """A deleting Mailbox let go (its mail listed for removal, or kept if it was not its own)."""


def finalizer_changes(
    mailboxes: Iterable[Observed[Mailbox]], *, config_applied: bool
) -> list[FinalizerChange]:
    """Finalizers to add (deletionPolicy Delete), drop (the policy is Retain now, or the spec is
    invalid) or release (deleting, and this pass's config got through)."""
    changes = []
    for observed in mailboxes:
        current = observed.finalizers
        has = FINALIZER in current
        model = observed.model
        wants = model is not None and model.spec.deletion_policy is DeletionPolicy.DELETE
        without = tuple(f for f in current if f != FINALIZER)
        if observed.deleting:
            if has and config_applied:
                changes.append(FinalizerChange(observed, without, released=True))
        elif wants and not has:
            changes.append(FinalizerChange(observed, (*current, FINALIZER), released=False))
        elif has and not wants:
            changes.append(FinalizerChange(observed, without, released=False))
    return changes
