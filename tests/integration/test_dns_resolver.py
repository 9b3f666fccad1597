"""The pod's resolver against a real authoritative server (PowerDNS): answer kinds the RFCs tell
apart, the shared cache, coalescing, and a dead server that only costs its own timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailpod.config import ResolverConfig
from mailpod.dns import CachingResolver, DnsTemporaryError, Status
from tests.harness.powerdns import PowerDns

ZONE = "resolver.test"
LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 400  # > 255 bytes: several strings in one record


@pytest.fixture(scope="module")
def zone(powerdns: PowerDns) -> PowerDns:
    powerdns.create_zone(
        ZONE,
        [
            (ZONE, "MX", 300, ["10 mx1.resolver.test.", "20 mx2.resolver.test."]),
            (ZONE, "TXT", 300, ['"v=spf1 -all"']),
            (f"long.{ZONE}", "TXT", 300, ['"' + LONG_TXT[:255] + '" "' + LONG_TXT[255:] + '"']),
            (f"mx1.{ZONE}", "A", 300, ["192.0.2.1"]),
        ],
    )
    return powerdns


@pytest.fixture
def resolver(zone: PowerDns) -> CachingResolver:
    return CachingResolver(ResolverConfig(nameservers=(zone.nameserver,), timeout_seconds=2.0))


async def test_records_nxdomain_and_nodata_are_told_apart(resolver: CachingResolver) -> None:
    mx = await resolver.query(ZONE, "MX")
    assert mx.status is Status.FOUND
    assert sorted(mx.records) == ["10 mx1.resolver.test.", "20 mx2.resolver.test."]
    assert mx.ttl == 300
    missing = await resolver.query(f"nowhere.{ZONE}", "A")
    assert missing.status is Status.NXDOMAIN and missing.void and missing.records == ()
    nodata = await resolver.query(f"mx1.{ZONE}", "AAAA")
    assert nodata.status is Status.NODATA and nodata.void


async def test_txt_strings_are_joined(resolver: CachingResolver) -> None:
    assert (await resolver.query(f"long.{ZONE}", "TXT")).records == (LONG_TXT,)
    assert (await resolver.query(ZONE, "txt")).records == ("v=spf1 -all",)


async def test_cache_and_coalescing_send_one_query(resolver: CachingResolver) -> None:
    answers = await asyncio.gather(*(resolver.query(ZONE, "MX") for _ in range(20)))
    assert len({a.records for a in answers}) == 1
    assert resolver.queries_sent == 1
    await resolver.query(ZONE.upper() + ".", "MX")  # same name, other spelling
    await resolver.query(f"nowhere.{ZONE}", "A")
    await resolver.query(f"nowhere.{ZONE}", "A")  # negative answers are cached too
    assert resolver.queries_sent == 2


async def test_cached_answer_expires_with_its_ttl(zone: PowerDns) -> None:
    now = [0.0]
    resolver = CachingResolver(ResolverConfig(nameservers=(zone.nameserver,)), clock=lambda: now[0])
    await resolver.query(ZONE, "MX")
    now[0] = 299.0
    await resolver.query(ZONE, "MX")
    assert resolver.queries_sent == 1
    now[0] = 301.0
    await resolver.query(ZONE, "MX")
    assert resolver.queries_sent == 2


async def test_dead_server_costs_its_timeout_and_stalls_nobody(
    zone: PowerDns, blackhole: str
) -> None:
    dead = CachingResolver(ResolverConfig(nameservers=(blackhole,), timeout_seconds=1.0))
    alive = CachingResolver(ResolverConfig(nameservers=(zone.nameserver,)))
    started = time.monotonic()
    stuck = asyncio.ensure_future(dead.query(ZONE, "MX"))
    answered = await alive.query(ZONE, "MX")  # meanwhile, on the same event loop
    answered_after = time.monotonic() - started
    with pytest.raises(DnsTemporaryError):
        await stuck
    failed_after = time.monotonic() - started
    assert answered.status is Status.FOUND
    assert answered_after < 0.5, answered_after
    assert 0.9 < failed_after < 3.0, failed_after
    # The failure is cached briefly: a retry storm does not reach the dead server.
    with pytest.raises(DnsTemporaryError):
        await dead.query(ZONE, "MX")
    assert dead.queries_sent == 1
