"""What to change in a zone so it holds the records a domain needs (pure, no I/O).

Ownership works like external-dns's TXT registry, at the granularity of *values*: beside every
name where we publish values, a TXT record at `_letterbox.<name>` says which of them are ours,
one string per owner and type:

    _letterbox.example.com. TXT "heritage=letterbox,owner=team-a/example,type=TXT,own=3f1c…:9a0b…"

Each `own` entry is a *slot* (what a value is for: the `v=spf1` of an SPF string, the exchange
of an MX, the target of an SRV, the one CNAME of a name) and the hash of the value we last
wrote there. That is what lets the plan tell apart, without keeping state anywhere but the
zone itself (which survives a cluster rebuild or a restore without status):
- a value of ours that the spec changed (update it),
- a value of ours someone edited by hand (drift: repair it and say so),
- a value of ours someone deleted (drift: put it back),
- someone else's value, even in the same RRset (never touched; if it sits in a slot we need, such
  as an existing SPF record, that is a conflict to report, not to overwrite).
Slots are hashed so the registry stays short and holds no record content.

Policies: `upsert-only` (default) creates and updates but never deletes; `sync` also withdraws
values we own and no longer want. SOA and NS are never planned. A second plan over the result
of the first is empty.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy
from letterbox.dns.provider import NEVER_TOUCHED, Change, RRset, absolute, normalize_value

REGISTRY_LABEL = "_letterbox"
HERITAGE = "letterbox"
_OWNER = re.compile(r"^[A-Za-z0-9._/-]{1,120}$")
_TXT_TAG = re.compile(r"^\s*(v=[A-Za-z0-9]+)\s*(;|\s|$)")

Key = tuple[str, RecordType]


class ActionKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPAIR = "repair"
    """A value of ours that was edited or deleted by hand, put back."""
    DELETE = "delete"
    TTL = "ttl"


@dataclass(frozen=True)
class Action:
    """One value-level step of a plan, for logs, events and status."""

    kind: ActionKind
    name: str
    type: RecordType
    value: str | None
    previous: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f"{self.type.value} {self.name}"
        if self.kind is ActionKind.CREATE:
            return f"create {what} {self.value!r}"
        if self.kind is ActionKind.DELETE:
            return f"delete {what} {self.previous[0]!r}" if self.previous else f"delete {what}"
        if self.kind is ActionKind.TTL:
            return f"set the TTL of {what}"
        old = ", ".join(repr(p) for p in self.previous) or "nothing"
        verb = "repair" if self.kind is ActionKind.REPAIR else "update"
        return f"{verb} {what}: {old} -> {self.value!r}"


@dataclass(frozen=True)
class Conflict:
    """A wanted record we do not publish because someone else's value holds its place."""

    record: DnsRecord
    held_by: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    """Provider changes in order: registry claims first, records, then released claims."""
    actions: tuple[Action, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    kept: tuple[Action, ...] = field(default=())
    """Deletions `upsert-only` held back (what `sync` would do)."""

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def drift(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is ActionKind.REPAIR)


def registry_name(name: str) -> str:
    return f"{REGISTRY_LABEL}.{absolute(name)}"


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def slot(rtype: RecordType, value: str) -> str:
    """What a value is for: values in one slot replace each other."""
    norm = normalize_value(rtype, value)
    if rtype is RecordType.TXT:
        match = _TXT_TAG.match(value)
        return match.group(1).lower() if match else "txt:" + value
    if rtype is RecordType.CNAME:
        return "cname"
    fields = norm.split()
    if rtype is RecordType.MX and len(fields) == 2:
        return "mx:" + fields[1]
    if rtype is RecordType.SRV and len(fields) == 4:
        return "srv:" + fields[3]
    return f"{rtype.value.lower()}:{norm}"


def slot_hash(rtype: RecordType, value: str) -> str:
    return _digest(f"{rtype.value}|{slot(rtype, value)}", 8)


def value_hash(rtype: RecordType, value: str) -> str:
    return _digest(f"{rtype.value}|{normalize_value(rtype, value)}", 12)


@dataclass(frozen=True)
class RegistryEntry:
    owner: str
    type: RecordType
    own: Mapping[str, str]
    """slot hash -> value hash."""

    def text(self) -> str:
        own = " ".join(f"{s}:{v}" for s, v in sorted(self.own.items()))
        return f"heritage={HERITAGE},owner={self.owner},type={self.type.value},own={own}"


def parse_registry(text: str) -> RegistryEntry | None:
    """A registry string, or None for anything else (someone else's TXT at the same name)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        fields[key.strip()] = value.strip()
    if fields.get("heritage") != HERITAGE or "owner" not in fields:
        return None
    try:
        rtype = RecordType(fields.get("type", ""))
    except ValueError:
        return None
    own: dict[str, str] = {}
    for item in fields.get("own", "").split():
        s, sep, v = item.partition(":")
        if sep and s and v:
            own[s] = v
    return RegistryEntry(fields["owner"], rtype, own)


def in_zone(name: str, zone: str) -> bool:
    name, zone = absolute(name), absolute(zone)
    return name == zone or name.endswith("." + zone)


def _managed(rrsets: Iterable[RRset]) -> dict[Key, RRset]:
    current: dict[Key, RRset] = {}
    for rrset in rrsets:
        if rrset.type in NEVER_TOUCHED:
            continue
        try:
            rtype = RecordType(rrset.type)
        except ValueError:
            continue
        key = (absolute(rrset.name), rtype)
        ttls = tuple(rrset.ttl_of(i) for i in range(len(rrset.values)))
        if key in current:  # providers listing one RRset in pieces (one record per value)
            before = current[key]
            current[key] = RRset(
                key[0], rtype.value, before.ttl, before.values + rrset.values, before.ttls + ttls
            )
        else:
            current[key] = RRset(key[0], rtype.value, rrset.ttl, rrset.values, ttls)
    return current


def _claims(current: Mapping[Key, RRset], owner: str) -> dict[Key, dict[str, str]]:
    """Our registry claims, keyed by the (name, type) they are about."""
    claims: dict[Key, dict[str, str]] = defaultdict(dict)
    prefix = REGISTRY_LABEL + "."
    for (name, rtype), rrset in current.items():
        if rtype is not RecordType.TXT or not name.startswith(prefix):
            continue
        for text in rrset.values:
            entry = parse_registry(text)
            if entry is not None and entry.owner == owner:
                claims[name.removeprefix(prefix), entry.type].update(entry.own)
    return claims


def _our_registry_strings(
    current: Mapping[Key, RRset], name: str, owner: str
) -> dict[RecordType, list[str]]:
    rrset = current.get((registry_name(name), RecordType.TXT))
    found: dict[RecordType, list[str]] = defaultdict(list)
    for text in rrset.values if rrset else ():
        entry = parse_registry(text)
        if entry is not None and entry.owner == owner:
            found[entry.type].append(text)
    return found


def _cname_clash(rtype: RecordType, types: set[str], cname_is_ours: bool) -> str | None:
    """Why a new `rtype` value cannot go where `types` already are (RFC 1034 §3.6.2)."""
    if rtype is RecordType.CNAME and types - {"CNAME"}:
        return (
            f"the name already has {', '.join(sorted(types - {'CNAME'}))} records, and a CNAME "
            "cannot share its name; remove them or point them at the mail host yourself"
        )
    if rtype is not RecordType.CNAME and "CNAME" in types and not cname_is_ours:
        return (
            "the name is a CNAME Letterbox did not create (delegated to a service?); "
            "remove it to let Letterbox publish here"
        )
    return None


def plan(
    desired: Sequence[DnsRecord],
    current: Iterable[RRset],
    *,
    zone: str,
    owner: str,
    policy: DnsPolicy = DnsPolicy.UPSERT_ONLY,
    registry_ttl: int | None = None,
) -> Plan:
    """The changes that bring `current` (a listing of `zone`) to hold `desired`, touching only
    values `owner` created. `owner` names the publisher (e.g. namespace/MailDomain name)."""
    if not _OWNER.match(owner):
        raise ValueError(f"owner {owner!r} must match {_OWNER.pattern}")
    listing = list(current)
    rrsets = _managed(listing)
    claims = _claims(rrsets, owner)
    # Every type at every name (unmanaged ones included): a CNAME cannot share its name.
    types_at: dict[str, set[str]] = defaultdict(set)
    for listed in listing:
        if listed.values:
            types_at[absolute(listed.name)].add(listed.type)
    ttl_default = registry_ttl or min((r.ttl for r in desired), default=3600)

    conflicts: list[Conflict] = []
    wanted: dict[Key, list[DnsRecord]] = defaultdict(list)
    for record in desired:
        key = (absolute(record.name), record.type)
        if not in_zone(key[0], zone):
            conflicts.append(
                Conflict(record, (), f"{record.name} is outside the zone {absolute(zone)}")
            )
            continue
        if absolute(record.name).split(".")[0] == REGISTRY_LABEL:
            raise ValueError(f"{record.name}: {REGISTRY_LABEL} names belong to the registry")
        if all(
            normalize_value(record.type, w.value) != normalize_value(record.type, record.value)
            for w in wanted[key]
        ):
            wanted[key].append(record)

    actions: list[Action] = []
    kept: list[Action] = []
    record_changes: list[Change] = []
    new_claims: dict[Key, dict[str, str]] = {}

    for key in sorted(set(wanted) | set(claims)):
        name, rtype = key
        rrset = rrsets.get(key)
        present = {normalize_value(rtype, v): v for v in rrset.values} if rrset else {}
        owned = claims.get(key, {})
        claimed: dict[str, str] = {}
        add: list[str] = []
        remove: list[str] = []
        ttl = ttl_default
        for record in wanted.get(key, []):
            ttl = record.ttl
            s, v = slot_hash(rtype, record.value), value_hash(rtype, record.value)
            norm = normalize_value(rtype, record.value)
            if norm in present:
                if s in owned:
                    claimed[s] = v
                    stale = [
                        old
                        for n, old in present.items()
                        if n != norm and slot_hash(rtype, old) == s
                    ]
                    if stale:  # a hand-added second value in our slot (a second SPF string)
                        remove += stale
                        actions.append(Action(ActionKind.REPAIR, name, rtype, None, tuple(stale)))
                # else: someone else's identical value; it stays theirs.
                continue
            in_slot = [old for old in present.values() if slot_hash(rtype, old) == s]
            if s not in owned:
                if in_slot:
                    conflicts.append(
                        Conflict(
                            record,
                            tuple(in_slot),
                            f"{rtype.value} {name} already holds {', '.join(map(repr, in_slot))}"
                            " which Letterbox did not create; remove it (or let it be) to "
                            "publish ours",
                        )
                    )
                    continue
                clash = _cname_clash(rtype, types_at[name], (name, RecordType.CNAME) in claims)
                if clash:
                    conflicts.append(Conflict(record, (), f"{rtype.value} {name}: {clash}"))
                    continue
                actions.append(Action(ActionKind.CREATE, name, rtype, record.value))
            else:
                ours = [old for old in in_slot if value_hash(rtype, old) == owned[s]]
                if in_slot and len(ours) == len(in_slot):
                    kind = ActionKind.UPDATE
                else:
                    kind = ActionKind.REPAIR  # edited or deleted by hand
                actions.append(Action(kind, name, rtype, record.value, tuple(in_slot)))
                remove += in_slot
            add.append(record.value)
            claimed[s] = v
        wanted_slots = {slot_hash(rtype, r.value) for r in wanted.get(key, [])}
        for s, v in owned.items():
            if s in wanted_slots:
                continue
            ours = [old for old in present.values() if value_hash(rtype, old) == v]
            step = Action(ActionKind.DELETE, name, rtype, None, tuple(ours))
            if policy == DnsPolicy.SYNC:
                remove += ours
                if ours:
                    actions.append(step)
            else:
                claimed[s] = v  # keep the claim: a later `sync` still knows it is ours
                if ours:
                    kept.append(step)
        if add or remove:
            remaining = len(present) - len(set(remove)) + len(add)
            record_changes.append(
                Change(
                    name,
                    rtype,
                    ttl if remaining else (rrset.ttl if rrset else ttl),
                    tuple(add),
                    tuple(dict.fromkeys(remove)),
                )
            )
        elif rrset is not None and claimed and wanted.get(key):
            # Our values again, at the new TTL (an RFC 2136 add of an existing RR sets its TTL).
            ttl_of = {
                normalize_value(rtype, v): rrset.ttl_of(i) for i, v in enumerate(rrset.values)
            }
            again = tuple(
                present[n]
                for n in (normalize_value(rtype, r.value) for r in wanted[key])
                if n in present
                and claimed.get(slot_hash(rtype, n)) == value_hash(rtype, n)
                and ttl_of[n] != ttl
            )
            if again:
                actions.append(Action(ActionKind.TTL, name, rtype, None))
                record_changes.append(Change(name, rtype, ttl, again))
        new_claims[key] = claimed

    claim_first: list[Change] = []
    claim_last: list[Change] = []
    names = sorted({name for name, _ in new_claims} | {name for name, _ in claims})
    for name in names:
        strings = _our_registry_strings(rrsets, name, owner)
        add, remove = [], []
        grows = False
        for rtype in RecordType:
            before = claims.get((name, rtype), {})
            after = new_claims.get((name, rtype), before)
            texts = strings.get(rtype, [])
            wanted_text = RegistryEntry(owner, rtype, after).text() if after else None
            if texts == ([wanted_text] if wanted_text else []):
                continue
            remove += texts
            if wanted_text:
                add.append(wanted_text)
            grows = grows or not set(after.items()) <= set(before.items())
        if not add and not remove:
            continue
        registry = rrsets.get((registry_name(name), RecordType.TXT))
        change = Change(
            registry_name(name),
            RecordType.TXT,
            registry.ttl if registry else ttl_default,
            tuple(add),
            tuple(remove),
        )
        (claim_first if grows else claim_last).append(change)

    return Plan(
        changes=(*claim_first, *record_changes, *claim_last),
        actions=tuple(actions),
        conflicts=tuple(conflicts),
        kept=tuple(kept),
    )


def apply_to(current: Iterable[RRset], changes: Iterable[Change]) -> list[RRset]:
    """`changes` applied to a listing the way providers apply them (value by value): the
    model the unit tests and the fake provider share."""
    rrsets = {(absolute(r.name), r.type): r for r in current}
    for change in changes:
        key = (absolute(change.name), change.type.value)
        old = rrsets.get(key)
        drop = {normalize_value(change.type, v) for v in change.remove}
        values = [
            v for v in (old.values if old else ()) if normalize_value(change.type, v) not in drop
        ]
        for value in change.add:
            if normalize_value(change.type, value) not in {
                normalize_value(change.type, v) for v in values
            }:
                values.append(value)
        if values:
            rrsets[key] = RRset(key[0], change.type.value, change.ttl, tuple(values))
        else:
            rrsets.pop(key, None)
    return sorted(rrsets.values(), key=lambda r: (r.name, r.type))
