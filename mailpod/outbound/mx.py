"""Where mail for a domain goes (RFC 5321 §5.1, RFC 7505), through the pod's Resolver."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from mailpod.dns import Resolver, Status


class NoRoute(Exception):
    """No way to reach the domain: `permanent` for NXDOMAIN and null MX, else retry later."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass(frozen=True)
class MxHost:
    preference: int
    host: str
    authenticated: bool = False
    """The MX answer was DNSSEC-validated (a condition for DANE)."""


async def mx_hosts(resolver: Resolver, domain: str) -> list[MxHost]:
    """The domain's MX hosts, most preferred first (equal preferences shuffled, §5.1), or the
    domain itself as the implicit MX when it has no MX records but has an address.

    Raises NoRoute (permanent) for a nonexistent domain or a null MX ("0 ."), DnsTemporaryError
    on DNS trouble."""
    answer = await resolver.query(domain, "MX")
    if answer.status is Status.NXDOMAIN:
        raise NoRoute(f"{domain}: no such domain", permanent=True)
    if answer.status is Status.NODATA:
        for rtype in ("AAAA", "A"):
            if (await resolver.query(domain, rtype)).status is Status.FOUND:
                return [MxHost(0, domain.rstrip(".").lower(), answer.authenticated)]
        raise NoRoute(f"{domain}: no MX and no address", permanent=True)
    hosts: list[tuple[int, float, str]] = []
    for record in answer.records:
        preference_text, _, host = record.partition(" ")
        try:
            preference = int(preference_text)
        except ValueError:
            continue
        host = host.strip().rstrip(".").lower()
        if not host:  # RFC 7505: "0 ." says the domain accepts no mail at all
            if len(answer.records) == 1:
                raise NoRoute(f"{domain}: null MX, the domain accepts no mail", permanent=True)
            continue  # a null MX beside real ones is a misconfiguration: use the real ones
        hosts.append((preference, random.random(), host))  # noqa: S311 (load spreading)
    if not hosts:
        raise NoRoute(f"{domain}: no usable MX records", permanent=True)
    return [MxHost(p, h, answer.authenticated) for p, _, h in sorted(hosts)]


async def addresses(resolver: Resolver, host: str) -> list[str]:
    """IPv6 and IPv4 addresses of `host` (an IP literal is its own address). Empty if it has
    none; DnsTemporaryError only when neither family could be looked up."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []
    failures = 0
    for rtype in ("AAAA", "A"):
        try:
            answer = await resolver.query(host, rtype)
        except Exception:
            failures += 1
            if failures == 2:
                raise
            continue
        found += [r for r in answer.records if _is_address(r)]
    return found


def _is_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    # A public MX pointing at 0.0.0.0 or a multicast address is not a place to connect to.
    return not (address.is_unspecified or address.is_multicast)
