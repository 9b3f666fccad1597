"""The one port every DNS provider implements, the shapes it speaks, and its errors.

A provider deals in RRsets (name, type, TTL, values) because that is what every backend stores,
but changes are expressed per *value*: an apex TXT RRset holds other people's verification
strings beside our SPF, so "replace the RRset" is never what the plan asks for. Each provider
turns `add`/`remove` of values into its own operations (RFC 2136 add/delete RR, a PowerDNS
read-modify-write REPLACE, one Cloudflare record per value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from letterbox.api.dnsrecord import RecordType

NEVER_TOUCHED = frozenset({"SOA", "NS"})
"""Types no plan and no provider changes: the zone's own delegation data."""


def absolute(name: str) -> str:
    """`name` lower-cased without the trailing dot: the form plans compare."""
    return name.rstrip(".").lower()


def normalize_value(rtype: str, value: str) -> str:
    """The comparable form of a value: TXT exactly as joined; other types with whitespace
    collapsed and names lower-cased (DNS names compare case-insensitively)."""
    if rtype == RecordType.TXT:
        return value
    return " ".join(value.split()).lower()


@dataclass(frozen=True)
class RRset:
    """The records of one name and type as a provider holds them. `values` are presentation
    forms with absolute names ending in a dot; TXT values are joined and unquoted."""

    name: str
    type: str
    ttl: int
    values: tuple[str, ...]
    ttls: tuple[int, ...] = ()
    """Per-value TTLs where the provider keeps one per record (Cloudflare); empty: `ttl`."""

    def ttl_of(self, index: int) -> int:
        return self.ttls[index] if index < len(self.ttls) else self.ttl


@dataclass(frozen=True)
class Change:
    """Values to add to and remove from the RRset at (name, type); `ttl` is the RRset's TTL
    afterwards (a DNS RRset has one TTL, RFC 2181 §5.2)."""

    name: str
    type: RecordType
    ttl: int
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class DnsProvider(Protocol):
    """A place DNS records live: read a zone, change values in it."""

    async def records(self, zone: str) -> list[RRset]:
        """Every RRset of `zone` (SOA and NS included; the plan ignores them)."""
        ...

    async def apply(self, zone: str, changes: Sequence[Change]) -> None:
        """Make `changes`, leaving every value they do not name as it is."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class DnsProviderError(Exception):
    """A provider call failed. `temporary` errors (timeouts, 5xx, rate limits, SERVFAIL) are
    worth retrying with back-off; the others need a change of spec or credentials."""

    reason = "ProviderError"

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class InvalidCredentials(DnsProviderError):
    """The provider refused our credentials (bad API key/token, wrong or missing TSIG key)."""

    reason = "InvalidCredentials"

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


class ChangeRefused(DnsProviderError):
    """The provider accepted our credentials but refused the change itself (e.g. BIND's
    integrity checks: an MX whose in-zone target has no address record)."""

    reason = "ChangeRefused"

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


class ZoneNotFound(DnsProviderError):
    """The provider does not serve the zone (or our credentials do not reach it)."""

    reason = "ZoneNotFound"

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)
