"""The one thing DNS-01 needs from DNS: put a TXT value at a name, see it served, and take it
away again.

The domain's `DnsProvider` (letterbox.dns) is adapted to this port, so ACME never learns which
provider it talks to, and tests can answer challenges through any real DNS server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

CHALLENGE_LABEL = "_acme-challenge"


class TxtPublisher(Protocol):
    """Publishes challenge TXT values. Several values may live at one name at once (a host and
    its wildcard share `_acme-challenge.<host>`), so the calls act on single values, never on
    the whole RRset."""

    async def publish(self, name: str, value: str) -> None:
        """Add `value` to the TXT RRset at `name` (a fully qualified name without the final
        dot)."""
        ...

    async def wait_visible(self, records: Sequence[tuple[str, str]]) -> None:
        """Return once the zones' authoritative servers answer every (name, value); raise when
        they do not in time. The CA queries them (not the provider's API), and a challenge it
        answers too early fails the authorization for good."""
        ...

    async def withdraw(self, name: str, value: str) -> None:
        """Remove `value` from the TXT RRset at `name`; other values stay."""
        ...


def challenge_name(host: str) -> str:
    """Where the TXT value for `host` goes (RFC 8555 §8.4); a wildcard shares its base's."""
    return f"{CHALLENGE_LABEL}.{host.removeprefix('*.')}"
