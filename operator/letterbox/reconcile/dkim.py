"""The DKIM key lifecycle, as pure decisions over a DKIMKey's keys and the clock.

One DKIMKey holds a short list of keys (`status.keys`), each moving forward only:

    Pending --record answered by every authoritative server--> Published
    Published --mounted long enough, config with it applied--> Active (the pods sign with it)
    Active --a newer key became Active--> Retiring (still published, no longer signing)
    Retiring --retireAfter elapsed, record withdrawn--> Retired (Secret deleted)

A new key never signs before its record is live: the pod config names only the Active key,
and a key becomes Active only from Published. The private key goes into the mounted DKIM Secret
when it is created, and the pod config names it only `mount_seconds` later, so the kubelet has
refreshed the mounted copy by the time a pod is told to sign with it (a pod told about a file it
cannot read yet would send unsigned mail). The replaced key leaves the config in the same
config write that brings the new one: exactly one key of a DKIMKey signs at any time.

Rotation is asked for by the schedule (`spec.rotation.every` after the active key's creation),
by a new value of the `letterbox.dev/rotate` annotation, or by a spec whose selector or
algorithm no longer matches the newest key. A request while a fresh key is still on its way is
answered by that key.

The state lives in `status.keys` (so it survives an operator restart); `merge` combines it with
what this process wrote last, as a pass may run before the watch brings back its own write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from letterbox.api.dkimkey import (
    ROTATE_ANNOTATION,
    DkimAlgorithm,
    DKIMKey,
    DKIMKeySpec,
    DkimKeyVersion,
    KeyPhase,
)
from letterbox.api.meta import duration_seconds

# Long enough for the kubelet to refresh a mounted Secret (its sync period plus cache TTL, about
# a minute by default) before the config names the key in it.
MOUNT_SECONDS = 90.0
DEFAULT_RETIRE_AFTER = "7d"
RETIRED_KEPT = 2
"""Retired keys kept in status for the record (the oldest go first)."""
MAX_KEYS = 8

_ORDER = {
    KeyPhase.PENDING: 0,
    KeyPhase.PUBLISHED: 1,
    KeyPhase.ACTIVE: 2,
    KeyPhase.RETIRING: 3,
    KeyPhase.RETIRED: 4,
}
PUBLISHED_PHASES = frozenset(
    {KeyPhase.PENDING, KeyPhase.PUBLISHED, KeyPhase.ACTIVE, KeyPhase.RETIRING}
)
STAGED_PHASES = frozenset({KeyPhase.PENDING, KeyPhase.PUBLISHED, KeyPhase.ACTIVE})
"""Keys whose private key is in the mounted DKIM Secret."""


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyState:
    """One key of a DKIMKey."""

    selector: str
    algorithm: DkimAlgorithm
    phase: KeyPhase
    created_at: datetime
    public_record: str | None = None
    published_at: datetime | None = None
    activated_at: datetime | None = None
    retiring_at: datetime | None = None
    retired_at: datetime | None = None

    @classmethod
    def of_status(cls, version: DkimKeyVersion) -> KeyState | None:
        created = parse_time(version.created_at)
        if created is None:
            return None
        return cls(
            selector=version.selector,
            algorithm=version.algorithm,
            phase=version.phase,
            created_at=created,
            public_record=version.public_record,
            published_at=parse_time(version.published_at),
            activated_at=parse_time(version.activated_at),
            retiring_at=parse_time(version.retiring_at),
            retired_at=parse_time(version.retired_at),
        )

    def to_status(self, secret_name: str | None) -> DkimKeyVersion:
        def text(when: datetime | None) -> str | None:
            return timestamp(when) if when is not None else None

        return DkimKeyVersion(
            selector=self.selector,
            algorithm=self.algorithm,
            phase=self.phase,
            secret_name=secret_name if self.phase is not KeyPhase.RETIRED else None,
            public_record=self.public_record,
            created_at=timestamp(self.created_at),
            published_at=text(self.published_at),
            activated_at=text(self.activated_at),
            retiring_at=text(self.retiring_at),
            retired_at=text(self.retired_at),
        )


Keys = tuple[KeyState, ...]


def _ordered(keys: Iterable[KeyState]) -> Keys:
    return tuple(sorted(keys, key=lambda k: (k.created_at, k.selector)))


def merge(stored: Iterable[KeyState], remembered: Iterable[KeyState]) -> Keys:
    """Per selector, the further-along of the stored and the remembered state (phases only
    move forward); a remembered key replaces a stored one whose record it no longer has."""
    merged = {k.selector: k for k in stored}
    for key in remembered:
        known = merged.get(key.selector)
        if (
            known is None
            or known.public_record != key.public_record
            or _ORDER[key.phase] >= _ORDER[known.phase]
        ):
            merged[key.selector] = key
    return _ordered(merged.values())


def rotation_requested(dkimkey: DKIMKey) -> bool:
    """A rotate annotation value not acted on yet (watch events for it carry no new
    generation, so the watch asks for a pass by this)."""
    value = dkimkey.metadata.annotations.get(ROTATE_ANNOTATION)
    return value is not None and value != dkimkey.status.rotate_handled


def live_keys(keys: Iterable[KeyState]) -> Keys:
    return tuple(k for k in keys if k.phase is not KeyPhase.RETIRED)


def newest(keys: Iterable[KeyState]) -> KeyState | None:
    live = live_keys(keys)
    return live[-1] if live else None


def active(keys: Iterable[KeyState]) -> KeyState | None:
    found = [k for k in keys if k.phase is KeyPhase.ACTIVE]
    return found[-1] if found else None


def retire_after(spec: DKIMKeySpec) -> timedelta:
    grace = spec.rotation.retire_after if spec.rotation else DEFAULT_RETIRE_AFTER
    return timedelta(seconds=duration_seconds(grace))


def next_rotation(spec: DKIMKeySpec, keys: Iterable[KeyState]) -> datetime | None:
    current = active(keys)
    if spec.rotation is None or current is None:
        return None
    return current.created_at + timedelta(seconds=duration_seconds(spec.rotation.every))


def derived_from(base: str, selector: str) -> bool:
    """Whether `selector` is `base` or a rotation of it (`base-yyyymmdd`, `base-yyyymmdd-n`)."""
    return (
        selector == base or re.fullmatch(rf"{re.escape(base)}-\d{{8}}(-\d+)?", selector) is not None
    )


def choose_selector(base: str, taken: Iterable[str], now: datetime) -> str:
    """`base` for the first key, else `base-yyyymmdd` (then `-2`, `-3`…): never a selector used
    before, since resolvers may still hold its old record."""
    used = set(taken)
    if base not in used:
        return base
    dated = f"{base}-{now.astimezone(UTC):%Y%m%d}"
    if dated not in used:
        return dated
    n = 2
    while f"{dated}-{n}" in used:
        n += 1
    return f"{dated}-{n}"


@dataclass(frozen=True)
class Plan:
    keys: Keys
    handled: str | None
    """The rotate annotation value acted on (for status.rotateHandled)."""
    create: KeyState | None = None
    """A key to generate now (Pending, no record yet)."""
    reason: str = ""
    """Why `create` is made: 'first key', 'rotation requested', 'scheduled rotation', …"""


def plan_keys(
    spec: DKIMKeySpec,
    keys: Iterable[KeyState],
    *,
    annotation: str | None,
    handled: str | None,
    now: datetime,
) -> Plan:
    """Whether a new key is due, and which selector it gets."""
    keys = _ordered(keys)
    retired = [k for k in keys if k.phase is KeyPhase.RETIRED][-RETIRED_KEPT:]
    keys = _ordered([*retired, *live_keys(keys)])
    latest = newest(keys)
    requested = annotation is not None and annotation != handled
    reason = ""
    if latest is None:
        reason = "first key"
    elif latest.phase in (KeyPhase.PENDING, KeyPhase.PUBLISHED):
        # A fresh key is on its way: it answers any request made meanwhile.
        return Plan(keys, annotation if requested else handled)
    elif requested:
        reason = "rotation requested by the letterbox.dev/rotate annotation"
    elif latest.algorithm is not spec.algorithm or not derived_from(spec.selector, latest.selector):
        reason = "the spec's selector or algorithm changed"
    else:
        due = next_rotation(spec, keys)
        if due is not None and now >= due:
            reason = "scheduled rotation (spec.rotation.every)"
    if not reason:
        return Plan(keys, handled)
    if len(live_keys(keys)) >= MAX_KEYS - RETIRED_KEPT:
        return Plan(keys, handled)  # retire some first; status has room for so many
    selector = choose_selector(spec.selector, (k.selector for k in keys), now)
    fresh = KeyState(selector, spec.algorithm, KeyPhase.PENDING, now)
    return Plan(_ordered([*keys, fresh]), annotation if requested else handled, fresh, reason)


def with_records(keys: Iterable[KeyState], records: Mapping[str, str]) -> tuple[Keys, Keys]:
    """Keys with the record of the private key in their Secret (`records` by selector), and the
    ones whose key changed under them (a Secret deleted and regenerated): those start over as
    Pending, so the new key signs only once its own record is live."""
    updated: list[KeyState] = []
    replaced: list[KeyState] = []
    for key in keys:
        record = records.get(key.selector)
        if key.phase is KeyPhase.RETIRED or record is None or record == key.public_record:
            updated.append(key)
        elif key.public_record is None:
            updated.append(replace(key, public_record=record))
        else:
            fresh = KeyState(key.selector, key.algorithm, KeyPhase.PENDING, key.created_at, record)
            updated.append(fresh)
            replaced.append(fresh)
    return _ordered(updated), tuple(replaced)


def withdrawing(keys: Iterable[KeyState], *, grace: timedelta, now: datetime) -> frozenset[str]:
    """Retiring keys whose grace period is over: their records are withdrawn now."""
    return frozenset(
        k.selector
        for k in keys
        if k.phase is KeyPhase.RETIRING
        and k.retiring_at is not None
        and now >= k.retiring_at + grace
    )


def to_publish(keys: Iterable[KeyState], *, grace: timedelta, now: datetime) -> Keys:
    """Keys whose record belongs in DNS (with a known record)."""
    gone = withdrawing(keys, grace=grace, now=now)
    return tuple(
        k
        for k in keys
        if k.phase in PUBLISHED_PHASES and k.public_record and k.selector not in gone
    )


def mark_published(keys: Iterable[KeyState], live: Iterable[str], now: datetime) -> Keys:
    """Pending keys whose record every authoritative server answers are Published."""
    seen = set(live)
    return tuple(
        replace(k, phase=KeyPhase.PUBLISHED, published_at=now)
        if k.phase is KeyPhase.PENDING and k.selector in seen
        else k
        for k in keys
    )


def signing(keys: Iterable[KeyState], *, now: datetime, mount_seconds: float) -> KeyState | None:
    """The one key the next config signs with: the newest Published key mounted long enough,
    else the Active one."""
    keys = tuple(keys)
    ready = [
        k
        for k in keys
        if k.phase is KeyPhase.PUBLISHED and now - k.created_at >= timedelta(seconds=mount_seconds)
    ]
    return ready[-1] if ready else active(keys)


def after_apply(
    keys: Iterable[KeyState], signer: KeyState | None, *, applied: bool, now: datetime
) -> Keys:
    """Once a config signing with `signer` is applied: it is Active and every other Active or
    older Published key is Retiring (the config no longer names them)."""
    keys = tuple(keys)
    if not applied or signer is None:
        return keys
    result = []
    for k in keys:
        if k.selector == signer.selector:
            if k.phase is KeyPhase.PUBLISHED:
                k = replace(k, phase=KeyPhase.ACTIVE, activated_at=now)
        elif k.phase is KeyPhase.ACTIVE or (
            k.phase is KeyPhase.PUBLISHED and k.created_at < signer.created_at
        ):
            k = replace(k, phase=KeyPhase.RETIRING, retiring_at=now)
        result.append(k)
    return tuple(result)


def mark_retired(keys: Iterable[KeyState], selectors: Iterable[str], now: datetime) -> Keys:
    gone = set(selectors)
    return tuple(
        replace(k, phase=KeyPhase.RETIRED, retired_at=now)
        if k.selector in gone and k.phase is KeyPhase.RETIRING
        else k
        for k in keys
    )


def next_due(
    spec: DKIMKeySpec,
    keys: Iterable[KeyState],
    *,
    now: datetime,
    mount_seconds: float,
) -> datetime | None:
    """When this DKIMKey next needs a pass without any watch event: a Published key finishing
    its mount time, a retiring key's grace ending, or the scheduled rotation. (Pending keys
    are looked at again on the propagation check's own schedule.)"""
    keys = tuple(keys)
    times: list[datetime] = []
    for k in keys:
        if k.phase is KeyPhase.PUBLISHED:
            times.append(k.created_at + timedelta(seconds=mount_seconds))
        elif k.phase is KeyPhase.RETIRING and k.retiring_at is not None:
            times.append(k.retiring_at + retire_after(spec))
    rotation = next_rotation(spec, keys)
    if rotation is not None:
        times.append(rotation)
    return max(min(times), now) if times else None
