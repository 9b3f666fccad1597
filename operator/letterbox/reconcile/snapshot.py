"""What one reconcile pass sees: every letterbox resource of the namespace and its Secrets.

Everything the operator renders goes into one mail pod config per namespace, so a pass always
looks at the whole namespace at once. The snapshot is plain data (built by `gather`, or by a
test from dicts), and every decision about it is a pure function (`decide`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from letterbox.api.alias import Alias
from letterbox.api.dkimkey import DKIMKey
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import MailDomain
from letterbox.api.meta import Resource, Status

R = TypeVar("R", bound=Resource)


class Kind(StrEnum):
    MAIL_DOMAIN = "MailDomain"
    MAILBOX = "Mailbox"
    ALIAS = "Alias"
    DKIM_KEY = "DKIMKey"


MODELS: dict[Kind, type[Resource]] = {
    Kind.MAIL_DOMAIN: MailDomain,
    Kind.MAILBOX: Mailbox,
    Kind.ALIAS: Alias,
    Kind.DKIM_KEY: DKIMKey,
}


@dataclass(frozen=True, order=True, slots=True)
class ObjectKey:
    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Observed(Generic[R]):
    """One live resource: the object as listed (kept to compare and write status against) and
    its model, or the reason the model rejects it. Age, generation and deletion are worked
    out at construction: every pass sorts and filters 10,000 objects by them. Slotted: the store
    holds one per object, and an instance dict would cost about 400 bytes each."""

    key: ObjectKey
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    model: R | None
    error: str | None = None
    generation: int | None = field(init=False, repr=False, compare=False)
    deleting: bool = field(init=False, repr=False, compare=False)
    age_key: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    """Older first (creationTimestamp is RFC 3339 in UTC with a Z suffix, so it orders as
    text); ties (same second) broken by kind and name so the order is total."""

    def __post_init__(self) -> None:
        metadata = self.raw.get("metadata") or {}
        created = str(metadata.get("creationTimestamp") or "")
        generation = metadata.get("generation")
        object.__setattr__(self, "generation", int(generation) if generation is not None else None)
        object.__setattr__(self, "deleting", bool(metadata.get("deletionTimestamp")))
        object.__setattr__(self, "age_key", (created, self.key.kind.value, self.key.name))

    @property
    def finalizers(self) -> tuple[str, ...]:
        return tuple((self.raw.get("metadata") or {}).get("finalizers") or ())

    @property
    def resource_version(self) -> str:
        return str((self.raw.get("metadata") or {}).get("resourceVersion") or "")


def _validation_message(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        path = ".".join(str(part) for part in detail["loc"]) or "(object)"
        problems.append(f"{path}: {str(detail['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)


# What a pass reads of a listed object besides its model: identity and age, the generation,
# deletion, and the stored status (compared and written back under its resourceVersion).
_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
)


# What the models read of metadata (`ObjectMeta`'s fields). The rest (resourceVersion,
# timestamps, finalizers) is read from `Observed.raw`; given to the model too, it would be held
# a second time as the model's extra fields.
_MODEL_METADATA = ("name", "namespace", "uid", "generation", "labels", "annotations")


def _slim(raw: Mapping[str, Any], status: Any) -> dict[str, Any]:
    """The parts of a listed object a pass needs after parsing it. A listed object carries its
    managedFields and annotations (kopf's diff-base is a copy of the spec), several KiB that a
    10,000-object namespace would otherwise hold in every pass."""
    metadata = raw.get("metadata") or {}
    slim: dict[str, Any] = {key: raw[key] for key in ("apiVersion", "kind") if key in raw}
    if status is not None:
        slim["status"] = status
    slim["metadata"] = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    return slim


# Statuses repeat: the operator writes the same conditions (with the same transition time for
# everything one pass settled) to thousands of objects. Each distinct status is kept once, as
# stored (for comparing and patching) and parsed (for the model), and shared by every object
# that has it; at 10,000 Mailboxes that is a few KiB instead of about 2.5 KiB an object. The
# table is bounded: past the limit it starts over (only sharing is lost).
STATUS_TABLE_LIMIT = 4096
_fields_sets: dict[frozenset[str], set[str]] = {}

M = TypeVar("M", bound=BaseModel)


def share_fields_sets(model: M) -> M:
    """`model` (and the models inside it) with pydantic's per-instance set of the fields that
    were set replaced by one shared set per distinct content. Each set costs 200-500 bytes,
    and a Mailbox is five models: 10,000 of them held about 16 MB of identical sets.

    Sharing is safe because every API model is frozen: pydantic adds to the set in place only
    on attribute assignment, which a frozen model refuses, and `model_copy` copies the set
    before updating it. Safe from several threads: a race only leaves two equal sets."""
    fields_set = model.__pydantic_fields_set__
    shared = _fields_sets.setdefault(frozenset(fields_set), fields_set)
    if shared is not fields_set:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    for value in model.__dict__.values():
        if isinstance(value, BaseModel):
            share_fields_sets(value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, BaseModel):
                    share_fields_sets(item)
    return model


_statuses: dict[tuple[Kind, str], tuple[Any, Status]] = {}


def _shared_status(kind: Kind, status: Any) -> tuple[Any, Status] | None:
    """(stored status, parsed status) shared with every object of `kind` with the same one;
    None when it does not parse (the whole object is then parsed, to report it). Safe from
    several threads: a race only makes two equal copies."""
    if not isinstance(status, Mapping):
        return None
    key = (kind, json.dumps(status, sort_keys=True, separators=(",", ":")))
    known = _statuses.get(key)
    if known is not None:
        return known
    model_type = MODELS[kind].model_fields["status"].annotation
    if not (isinstance(model_type, type) and issubclass(model_type, Status)):
        return None
    try:
        parsed = model_type.model_validate(status)
    except ValidationError:
        return None
    if len(_statuses) >= STATUS_TABLE_LIMIT:
        _statuses.clear()
    return _statuses.setdefault(key, (status, parsed))


def observe(kind: Kind, raw: Mapping[str, Any]) -> Observed[Any]:
    """Parse a listed object; a model that rejects it (e.g. a rule the CRD cannot express, or a
    CRD older than the operator) gives an Observed with `error` instead of raising."""
    metadata = raw.get("metadata") or {}
    key = ObjectKey(kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
    parsed = {**raw, "metadata": {k: metadata[k] for k in _MODEL_METADATA if k in metadata}}
    status = raw.get("status")
    shared = _shared_status(kind, status) if status is not None else None
    if shared is not None:
        # A model instance is taken as it is (pydantic does not revalidate instances).
        status, parsed["status"] = shared
    try:
        model = share_fields_sets(MODELS[kind].model_validate(parsed))
    except ValidationError as error:
        return Observed(
            key=key, raw=_slim(raw, status), model=None, error=_validation_message(error)
        )
    return Observed(key=key, raw=_slim(raw, status), model=model)


def observe_again(known: Observed[Any], raw: Mapping[str, Any]) -> Observed[Any]:
    """`observe` of a newer version of `known`. When nothing a model reads changed but the
    status (the echo of our own status write: same generation, labels and annotations), the
    model is reused with the new status instead of being validated again, which for 10,000
    Mailboxes applied at once halves the parsing."""
    model = known.model
    metadata = raw.get("metadata") or {}
    status = raw.get("status")
    if (
        model is None
        or status is None
        or metadata.get("uid") != model.metadata.uid
        or metadata.get("generation") != model.metadata.generation
        or (metadata.get("labels") or {}) != model.metadata.labels
        or (metadata.get("annotations") or {}) != model.metadata.annotations
    ):
        return observe(known.key.kind, raw)
    shared = _shared_status(known.key.kind, status)
    if shared is None:
        return observe(known.key.kind, raw)
    stored, parsed = shared
    if model.status is not parsed:
        model = share_fields_sets(model.model_copy(update={"status": parsed}))
    return Observed(key=known.key, raw=_slim(raw, stored), model=model)


class ParseCache:
    """Parsed objects from the previous listing, by uid and resourceVersion: an object whose
    resourceVersion did not change is the same object, so a pass over 10,000 Mailboxes parses
    (and validates, with the CRD's patterns) only the ones that changed. `observe` may run in
    several threads at once (one per kind); each uid belongs to one of them."""

    def __init__(self) -> None:
        self._previous: dict[str, tuple[str, Observed[Any]]] = {}
        self._current: dict[str, tuple[str, Observed[Any]]] = {}

    def observe(self, kind: Kind, raw: Mapping[str, Any]) -> Observed[Any]:
        metadata = raw.get("metadata") or {}
        uid, version = str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or "")
        known = self._previous.get(uid)
        if uid and version and known is not None and known[0] == version:
            observed = known[1]
        else:
            observed = observe(kind, raw)
        if uid and version:
            self._current[uid] = (version, observed)
        return observed

    def finish(self) -> None:
        """After a complete listing: forget the objects it no longer had."""
        self._previous, self._current = self._current, {}

    def abandon(self) -> None:
        """After a failed listing: keep what was known before."""
        self._previous.update(self._current)
        self._current = {}


def _slim_secret(raw: Mapping[str, Any]) -> dict[str, Any]:
    metadata = raw.get("metadata") or {}
    kept = {k: metadata[k] for k in ("name", "labels", "creationTimestamp") if k in metadata}
    return {"metadata": kept, "data": raw.get("data") or {}}


@dataclass(frozen=True)
class SecretView:
    """A Secret as the pass needs it: its labels and base64-decoded data on demand."""

    raw: Mapping[str, Any] = field(repr=False)
    # Decoded values, once each: a pass reads every Mailbox's password key of a Secret.
    _decoded: dict[str, bytes | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of_data(cls, name: str, data: Mapping[str, bytes]) -> SecretView:
        """A view of decoded values (as `ensure_secret` returns them)."""
        encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
        return cls({"metadata": {"name": name}, "data": encoded})

    @property
    def name(self) -> str:
        return str((self.raw.get("metadata") or {}).get("name"))

    @property
    def labels(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = (self.raw.get("metadata") or {}).get("labels") or {}
        return labels

    @property
    def created(self) -> str:
        return str((self.raw.get("metadata") or {}).get("creationTimestamp") or "")

    def value(self, key: str) -> bytes | None:
        if key in self._decoded:
            return self._decoded[key]
        encoded = (self.raw.get("data") or {}).get(key)
        value = None if encoded is None else base64.b64decode(encoded)
        self._decoded[key] = value
        return value

    def text(self, key: str) -> str | None:
        value = self.value(key)
        return None if value is None else value.decode("utf-8", "replace")


def secret_view(raw: Mapping[str, Any]) -> SecretView:
    """A listed Secret as a pass keeps it (name, labels, creation time and data)."""
    return SecretView(_slim_secret(raw))


@dataclass(frozen=True)
class Snapshot:
    namespace: str
    domains: tuple[Observed[MailDomain], ...] = ()
    mailboxes: tuple[Observed[Mailbox], ...] = ()
    aliases: tuple[Observed[Alias], ...] = ()
    dkim_keys: tuple[Observed[DKIMKey], ...] = ()
    secrets: Mapping[str, SecretView] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        namespace: str,
        objects: Mapping[Kind, Iterable[Mapping[str, Any]]],
        secrets: Iterable[Mapping[str, Any]] = (),
    ) -> Snapshot:
        def parsed(kind: Kind) -> tuple[Observed[Any], ...]:
            return tuple(observe(kind, raw) for raw in objects.get(kind, ()))

        views = (SecretView(_slim_secret(raw)) for raw in secrets)
        return cls(
            namespace=namespace,
            domains=parsed(Kind.MAIL_DOMAIN),
            mailboxes=parsed(Kind.MAILBOX),
            aliases=parsed(Kind.ALIAS),
            dkim_keys=parsed(Kind.DKIM_KEY),
            secrets={view.name: view for view in views},
        )

    @classmethod
    def of_observed(
        cls,
        namespace: str,
        observed: Mapping[Kind, Iterable[Observed[Any]]],
        secrets: Iterable[SecretView] = (),
    ) -> Snapshot:
        """From objects already parsed (`observe`) and Secrets already slimmed (`secret_view`),
        as `gather` lists them page by page."""
        return cls(
            namespace=namespace,
            domains=tuple(observed.get(Kind.MAIL_DOMAIN, ())),
            mailboxes=tuple(observed.get(Kind.MAILBOX, ())),
            aliases=tuple(observed.get(Kind.ALIAS, ())),
            dkim_keys=tuple(observed.get(Kind.DKIM_KEY, ())),
            secrets={view.name: view for view in secrets},
        )

    def all(self) -> tuple[Observed[Any], ...]:
        return (*self.domains, *self.mailboxes, *self.aliases, *self.dkim_keys)
