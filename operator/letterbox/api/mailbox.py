"""Mailbox: one user's address, credentials, quota and sending rights."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from letterbox.api.meta import (
    ApiModel,
    CrdNames,
    EmailAddress,
    ObjectName,
    PrinterColumn,
    Quantity,
    Resource,
    Rule,
    Status,
    Unique,
    ready_columns,
)


class PasswordSecretRef(ApiModel):
    """A Secret key holding the password, either in plain text or as a standard hash
    ($argon2id$…, $2b$… bcrypt, $6$… SHA-512-crypt, or Dovecot-style {SCHEME}…)."""

    name: ObjectName
    """Secret name, in the Mailbox's namespace."""
    key: Annotated[str, Field(min_length=1, max_length=253)] = "password"
    """Key inside the Secret's data."""


class PasswordSpec(ApiModel):
    """Where the password comes from. Omit the whole block to have one generated into the Secret
    `<mailbox name>-credentials` (named in status)."""

    secret_ref: PasswordSecretRef


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class MailboxSpec(ApiModel):
    """A mailbox users log in to with IMAP and submission."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(self.address in self.sendAs)",
            "sendAs must not repeat the mailbox's own address",
            lambda s: s.address not in s.send_as,
        ),
    )

    address: EmailAddress
    """The address and login name, e.g. alice@example.com. Its domain needs a MailDomain."""
    display_name: Annotated[str, Field(max_length=128)] | None = None
    """Name shown in generated mail (bounces, autoconfig)."""
    password: PasswordSpec | None = None
    quota: Quantity | None = None
    """Storage quota such as 5Gi; defaults to the MailDomain's defaultQuota; 0 is unlimited."""
    send_as: Annotated[
        tuple[EmailAddress, ...],
        Field(max_length=100),
        Unique(),
    ] = ()
    """Extra addresses this user may send as (envelope sender and From:)."""
    suspended: bool = False
    """A suspended mailbox still receives mail but cannot log in or send."""
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    """What happens to the stored mail when the Mailbox is deleted: Retain keeps it on the volume,
    Delete removes it."""


class MailboxStatus(Status):
    """Observed state of a Mailbox."""

    credentials_secret: ObjectName | None = None
    """The Secret holding a generated password, when the operator made one."""
    quota_bytes: Annotated[int, Field(ge=0)] | None = None
    """The effective quota in bytes (0 is unlimited)."""


class Mailbox(Resource):
    names: ClassVar[CrdNames] = CrdNames(
        plural="mailboxes",
        short_names=("mbx",),
        columns=(
            PrinterColumn("Address", ".spec.address", description="Mail address"),
            PrinterColumn("Quota", ".spec.quota", description="Storage quota"),
            PrinterColumn("Suspended", ".spec.suspended", type="boolean", priority=1),
            *ready_columns(),
        ),
    )

    kind: Literal["Mailbox"] = "Mailbox"
    spec: MailboxSpec
    status: MailboxStatus = Field(default_factory=MailboxStatus)
