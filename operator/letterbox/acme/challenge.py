"""The one thing DNS-01 needs from DNS: put a TXT value at a name, and take it away again.

The domain's `DnsProvider` (letterbox.dns) is adapted to this port, so ACME never learns which
provider it talks to, and tests can answer challenges through any real DNS server.
"""

from __future__ import annotations

from typing import Protocol

CHALLENGE_LABEL = "_acme-challenge"


class TxtPublisher(Protocol):
    """Publishes challenge TXT values. Several values may live at one name at once (a host and
    its wildcard share `_acme-challenge.<host>`), so both calls act on one value, never on the
    whole RRset."""

    async def publish(self, name: str, value: str) -> None:
        """Add `value` to the TXT RRset at `name` (a fully qualified name without the final
        dot); return once the authoritative servers answer it."""
        ...

    async def withdraw(self, name: str, value: str) -> None:
        """Remove `value` from the TXT RRset at `name`; other values stay."""
        ...


def challenge_name(host: str) -> str:
    """Where the TXT value for `host` goes (RFC 8555 §8.4); a wildcard shares its base's."""
    return f"{CHALLENGE_LABEL}.{host.removeprefix('*.')}"
