"""DKIMKey: a domain's signing key, its selector and how often it rotates."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from letterbox.api.meta import (
    ApiModel,
    CrdNames,
    DomainName,
    Duration,
    Matches,
    ObjectName,
    PrinterColumn,
    Resource,
    Status,
    ready_columns,
)


class DkimAlgorithm(StrEnum):
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ED25519 = "ed25519"


class KeyPhase(StrEnum):
    """Lifecycle of one key: a new key never signs before its record is live."""

    PENDING = "Pending"
    PUBLISHED = "Published"
    ACTIVE = "Active"
    RETIRING = "Retiring"
    RETIRED = "Retired"


Selector = Annotated[
    str,
    Field(min_length=1, max_length=40),
    Matches(
        r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        "must be a DNS label of at most 40 characters (lower-case letters, digits, '-'), "
        "leaving room for the date suffix rotated keys get",
    ),
]


# A selector as keys get them: the spec's, or it with a rotation suffix (-yyyymmdd[-n]).
KeySelector = Annotated[
    str,
    Field(min_length=1, max_length=63),
    Matches(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", "must be a DNS label"),
]
Timestamp = Annotated[str, Field(max_length=40)]
ROTATE_ANNOTATION = "letterbox.dev/rotate"
"""A new value asks for one rotation (`kubectl annotate dkimkey NAME
letterbox.dev/rotate="$(date +%s)" --overwrite`); status.rotateHandled records the value
acted on."""


class RotationSpec(ApiModel):
    """Scheduled rotation. A rotated key gets the selector `<selector>-<yyyymmdd>`."""

    every: Duration
    """Age at which a new key replaces the active one, e.g. 180d."""
    retire_after: Duration = "7d"
    """How long the replaced key stays published (mail in flight still verifies) before its
    record and Secret are removed."""


class DKIMKeySpec(ApiModel):
    """A DKIM signing key (RFC 6376; ed25519 per RFC 8463)."""

    domain: DomainName
    """The signing domain (d=); needs a MailDomain."""
    selector: Selector
    """The selector (s=) of the first key; the record is <selector>._domainkey.<domain>."""
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_2048
    """rsa-2048, rsa-3072 or ed25519. Sign with both an RSA and an ed25519 key (two DKIMKeys)
    for receivers that do not verify ed25519 yet."""
    rotation: RotationSpec | None = None
    """Rotate on a schedule; without it the key lives until rotated by the annotation
    letterbox.dev/rotate."""


class DkimKeyVersion(ApiModel):
    """One generated key of a DKIMKey and where it is in its lifecycle: Pending (record not yet
    answered by the zone's authoritative servers), Published (answered; not signing yet),
    Active (the mail pods sign with it), Retiring (replaced; still published so mail in flight
    verifies), Retired (record withdrawn, Secret deleted)."""

    selector: KeySelector
    algorithm: DkimAlgorithm
    phase: KeyPhase
    secret_name: ObjectName | None = None
    """Secret holding the private key (deleted once Retired)."""
    public_record: Annotated[str, Field(max_length=4096)] | None = None
    """The TXT value published at <selector>._domainkey.<domain>."""
    created_at: Timestamp
    published_at: Timestamp | None = None
    activated_at: Timestamp | None = None
    retiring_at: Timestamp | None = None
    retired_at: Timestamp | None = None


class DKIMKeyStatus(Status):
    """Observed state of a DKIMKey. The top-level key fields describe the newest key; `keys`
    lists every key still published (and the last retired ones)."""

    phase: KeyPhase | None = None
    """Phase of the newest key."""
    selector: KeySelector | None = None
    """Selector of the newest key."""
    secret_name: ObjectName | None = None
    """Secret holding the newest private key."""
    public_record: Annotated[str, Field(max_length=4096)] | None = None
    """The TXT record value of the newest key."""
    created_at: Timestamp | None = None
    published_at: Timestamp | None = None
    activated_at: Timestamp | None = None
    signing_selector: KeySelector | None = None
    """The selector the mail pods sign with (none until a key is Active)."""
    next_rotation_at: Timestamp | None = None
    """When the scheduled rotation (spec.rotation.every) generates the next key."""
    rotate_handled: Annotated[str, Field(max_length=253)] | None = None
    """The value of the letterbox.dev/rotate annotation last acted on."""
    keys: Annotated[tuple[DkimKeyVersion, ...], Field(max_length=8)] = ()
    """Every key not yet retired, oldest first, and the last retired ones."""


class DKIMKey(Resource):
    names: ClassVar[CrdNames] = CrdNames(
        plural="dkimkeys",
        short_names=("dkim",),
        columns=(
            PrinterColumn("Domain", ".spec.domain", description="Signing domain"),
            PrinterColumn("Selector", ".status.selector", description="Current selector"),
            PrinterColumn("Algorithm", ".spec.algorithm"),
            PrinterColumn("Phase", ".status.phase", description="Lifecycle phase of the key"),
            *ready_columns(),
        ),
    )

    kind: Literal["DKIMKey"] = "DKIMKey"
    spec: DKIMKeySpec
    status: DKIMKeyStatus = Field(default_factory=DKIMKeyStatus)
