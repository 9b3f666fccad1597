"""HELO sanity and DNS list scoring."""

from __future__ import annotations

import ipaddress

import pytest

from mailpod.checks import dnsbl, helo
from mailpod.config import DnsList, DnsListKind
from tests.unit.mailpod.checks.zonedata import ZoneResolver

OURS = {"mail.example.com", "example.com"}


@pytest.mark.parametrize(
    ("name", "ip", "refused"),
    [
        ("client.remote.test", "192.0.2.1", ""),
        ("localhost", "192.0.2.1", ""),  # bare names are common and harmless
        ("[192.0.2.1]", "192.0.2.1", ""),
        ("[IPv6:2001:db8::1]", "2001:db8::1", ""),
        ("[192.0.2.1]", "::ffff:192.0.2.1", ""),
        ("[192.0.2.2]", "192.0.2.1", "address literal is not the client's address"),
        ("[not-an-ip]", "192.0.2.1", "malformed address literal"),
        ("MAIL.example.com", "192.0.2.1", "HELO claims to be this server"),
        ("example.com.", "192.0.2.1", "HELO claims to be this server"),
        ("bad name", "192.0.2.1", "HELO is not a domain name"),
        ("a..b", "192.0.2.1", "HELO is not a domain name"),
        ("", "192.0.2.1", "empty HELO"),
    ],
)
def test_helo(name: str, ip: str, refused: str) -> None:
    assert helo.problem(name, ip, OURS) == refused


def test_reversed_ip() -> None:
    assert dnsbl.reversed_ip("192.0.2.99") == "99.2.0.192"
    assert dnsbl.reversed_ip("::ffff:192.0.2.99") == "99.2.0.192"
    assert dnsbl.reversed_ip("2001:db8::1").startswith("1.0.0.0.") and dnsbl.reversed_ip(
        "2001:db8::1"
    ).endswith(".8.b.d.0.1.0.0.2")


async def test_weights_add_up_and_allow_lists_subtract() -> None:
    resolver = ZoneResolver(
        {
            "99.2.0.192.bl.test": [{"A": "127.0.0.2"}],
            "99.2.0.192.strict.test": [{"A": "127.0.0.4"}],
            "99.2.0.192.wl.test": [{"A": "127.0.0.5"}],
            "spam.test.dbl.test": [{"A": "127.0.1.2"}],
            "99.2.0.192.bogus.test": [{"A": "10.0.0.1"}],  # not a listing answer
            "99.2.0.192.dead.test": ["TIMEOUT"],
        }
    )
    lists = (
        DnsList(zone="bl.test", weight=2),
        DnsList(zone="strict.test", answers=(ipaddress.IPv4Address("127.0.0.2"),)),
        DnsList(zone="dbl.test", kind=DnsListKind.DOMAIN, weight=3),
        DnsList(zone="bogus.test", weight=5),
        DnsList(zone="dead.test", weight=5),
    )
    verdict = await dnsbl.check(resolver, lists, "192.0.2.99", ["spam.test", "helo.spam.test"])
    assert (verdict.score, verdict.listed_by) == (5, ("bl.test", "dbl.test"))
    allow = (*lists, DnsList(zone="wl.test", weight=-10))
    assert (await dnsbl.check(resolver, allow, "192.0.2.99", ["spam.test"])).score == -5
    assert (await dnsbl.check(resolver, lists, "192.0.2.1")).score == 0
