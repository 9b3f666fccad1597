"""DNS-01 through the domain's own DNS provider: the `TxtPublisher` port of letterbox.acme on
top of letterbox.dns's `DnsProvider`.

A challenge value is one value added to (and later removed from) the TXT RRset at
`_acme-challenge.<host>`, never a replacement of the RRset: a host and its wildcard share that
name, and so do two orders running at once. Before the CA is told to look, every authoritative
server of the zone must answer the values (`dns.publish.check_propagation`): a provider's API
accepts a change seconds before its secondaries serve it, and a CA that looks too early fails
the authorization for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from letterbox.acme.issuer import AcmeError
from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.dns.provider import Change, DnsProvider
from letterbox.dns.publish import authoritative_servers, check_propagation

# Short: a stale challenge value cached by a resolver must not outlive the next order.
CHALLENGE_TTL = 60
PROPAGATION_TIMEOUT = 300.0
FIRST_CHECK_INTERVAL = 0.5
LONGEST_CHECK_INTERVAL = 10.0


class ProviderTxtPublisher:
    def __init__(
        self,
        provider: DnsProvider,
        zone: str,
        *,
        ttl: int = CHALLENGE_TTL,
        authoritative: Sequence[str] = (),
        propagation_timeout: float = PROPAGATION_TIMEOUT,
    ) -> None:
        self.provider = provider
        self.zone = zone
        self.ttl = ttl
        self.authoritative = tuple(authoritative)
        """host:port of the servers to check; empty: those the zone's NS records name."""
        self.propagation_timeout = propagation_timeout

    def _inside(self, name: str) -> None:
        if name != self.zone and not name.endswith(f".{self.zone}"):
            raise ValueError(f"{name} is not inside the zone {self.zone}")

    async def publish(self, name: str, value: str) -> None:
        self._inside(name)
        await self.provider.apply(self.zone, [Change(name, RecordType.TXT, self.ttl, add=(value,))])

    async def wait_visible(self, records: Sequence[tuple[str, str]]) -> None:
        for name, _ in records:
            self._inside(name)
        servers = list(self.authoritative) or await authoritative_servers(self.zone)
        wanted = [DnsRecord(name=n, type=RecordType.TXT, ttl=self.ttl, value=v) for n, v in records]
        deadline = time.monotonic() + self.propagation_timeout
        interval = FIRST_CHECK_INTERVAL
        while True:
            propagation = await check_propagation(wanted, servers)
            if propagation.complete:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                shown = ", ".join(propagation.pending[:3])
                raise AcmeError(
                    f"the challenge TXT records were not served by every authoritative server "
                    f"within {self.propagation_timeout:g}s: {shown}"
                )
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 2, LONGEST_CHECK_INTERVAL)

    async def withdraw(self, name: str, value: str) -> None:
        self._inside(name)
        await self.provider.apply(
            self.zone, [Change(name, RecordType.TXT, self.ttl, remove=(value,))]
        )
