"""DNS-01 through the domain's own DNS provider: the `TxtPublisher` port of letterbox.acme on
top of letterbox.dns's `DnsProvider`.

A challenge value is one value added to (and later removed from) the TXT RRset at
`_acme-challenge.<host>`, never a replacement of the RRset: a host and its wildcard share that
name, and so do two orders running at once.
"""

from __future__ import annotations

from letterbox.api.dnsrecord import RecordType
from letterbox.dns.provider import Change, DnsProvider

# Short: a stale challenge value cached by a resolver must not outlive the next order.
CHALLENGE_TTL = 60


class ProviderTxtPublisher:
    def __init__(self, provider: DnsProvider, zone: str, *, ttl: int = CHALLENGE_TTL) -> None:
        self.provider = provider
        self.zone = zone
        self.ttl = ttl

    def _inside(self, name: str) -> None:
        if name != self.zone and not name.endswith(f".{self.zone}"):
            raise ValueError(f"{name} is not inside the zone {self.zone}")

    async def publish(self, name: str, value: str) -> None:
        self._inside(name)
        await self.provider.apply(self.zone, [Change(name, RecordType.TXT, self.ttl, add=(value,))])

    async def withdraw(self, name: str, value: str) -> None:
        self._inside(name)
        await self.provider.apply(
            self.zone, [Change(name, RecordType.TXT, self.ttl, remove=(value,))]
        )
