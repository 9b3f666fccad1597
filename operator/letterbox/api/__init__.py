"""The CRD API (letterbox.dev/v1alpha1) as pydantic models: the single source of truth for crds/."""

from letterbox.api.alias import Alias, AliasSpec
from letterbox.api.dkimkey import DKIMKey, DKIMKeySpec
from letterbox.api.mailbox import Mailbox, MailboxSpec
from letterbox.api.maildomain import MailDomain, MailDomainSpec
from letterbox.api.meta import GROUP, VERSION, Resource

KINDS: tuple[type[Resource], ...] = (MailDomain, Mailbox, Alias, DKIMKey)

__all__ = [
    "GROUP",
    "KINDS",
    "VERSION",
    "Alias",
    "AliasSpec",
    "DKIMKey",
    "DKIMKeySpec",
    "MailDomain",
    "MailDomainSpec",
    "Mailbox",
    "MailboxSpec",
    "Resource",
]
