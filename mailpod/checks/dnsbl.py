"""DNS block and allow lists (IP-based and domain-based), through the pod's resolver.

A listed name answers A 127.0.0.x; weights add up (allow lists have negative weights) and the
client is refused when the sum reaches the configured threshold. A list that times out counts
as not listing: a broken list must not stop mail."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mailpod.config import DnsList, DnsListKind
from mailpod.dns import DnsTemporaryError, Resolver

_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class DnsListVerdict:
    score: int
    listed_by: tuple[str, ...]


def reversed_ip(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


def _counts(dns_list: DnsList, records: Sequence[str]) -> bool:
    for record in records:
        try:
            address = ipaddress.IPv4Address(record)
        except ValueError:
            continue
        if dns_list.answers:
            if address in dns_list.answers:
                return True
        elif address in _LOOPBACK_NET:
            return True
    return False


async def _listed(resolver: Resolver, dns_list: DnsList, name: str) -> bool:
    try:
        answer = await resolver.query(f"{name}.{dns_list.zone}", "A")
    except DnsTemporaryError:
        return False
    return _counts(dns_list, answer.records)


async def check(
    resolver: Resolver, lists: Sequence[DnsList], ip: str, domains: Sequence[str] = ()
) -> DnsListVerdict:
    """Query every list concurrently; `domains` (MAIL FROM domain, HELO) go to domain lists."""
    jobs: list[tuple[DnsList, str]] = []
    for dns_list in lists:
        if dns_list.kind is DnsListKind.IP:
            jobs.append((dns_list, reversed_ip(ip)))
        else:
            jobs += [(dns_list, d.lower().rstrip(".")) for d in domains if d and "." in d]
    found = await asyncio.gather(*(_listed(resolver, lst, name) for lst, name in jobs))
    score, listed_by = 0, []
    counted: set[str] = set()
    for (dns_list, _), hit in zip(jobs, found, strict=True):
        if hit and dns_list.zone not in counted:  # a list counts once however many names hit
            counted.add(dns_list.zone)
            score += dns_list.weight
            listed_by.append(dns_list.zone)
    return DnsListVerdict(score, tuple(listed_by))
