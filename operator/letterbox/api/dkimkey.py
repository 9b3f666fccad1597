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


class DKIMKeyStatus(Status):
    """Observed state of a DKIMKey."""

    phase: KeyPhase | None = None
    """Phase of the current key."""
    selector: Selector | None = None
    """Selector of the current key."""
    secret_name: ObjectName | None = None
    """Secret holding the current private key."""
    public_record: Annotated[str, Field(max_length=4096)] | None = None
    """The TXT record value of the current key."""
    created_at: Annotated[str, Field(max_length=40)] | None = None
    published_at: Annotated[str, Field(max_length=40)] | None = None
    activated_at: Annotated[str, Field(max_length=40)] | None = None


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
