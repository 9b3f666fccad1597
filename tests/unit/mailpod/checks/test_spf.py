"""SPF: the OpenSPF RFC 7208 test suite (as shipped in Debian's python3-spf) run through
mailpod.checks.spf, with the suite's own zone data served by ZoneResolver."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpod.checks.spf import SpfResult, check_helo, check_host, check_mail_from
from mailpod.dns import Answer, Status
from tests.unit.mailpod.checks.zonedata import ZoneResolver

SUITE = Path("/usr/share/doc/python3-spf/rfc7208-tests.yml.gz")


def _load() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    cases = []
    with gzip.open(SUITE, "rt") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, test in scenario["tests"].items():
                cases.append((name, test, scenario["zonedata"]))
    return cases


CASES = _load()


def test_the_whole_suite_is_here() -> None:
    assert len(CASES) == 203


@pytest.mark.parametrize(("test", "zonedata"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_openspf_rfc7208(test: dict[str, Any], zonedata: dict[str, Any]) -> None:
    resolver = ZoneResolver(zonedata)
    mail_from = test["mailfrom"]
    if mail_from:
        verdict = await check_mail_from(resolver, test["host"], mail_from, test["helo"])
    else:
        verdict = await check_helo(resolver, test["host"], test["helo"])
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert verdict.result in expected, verdict
    explanation = test.get("explanation")
    if explanation is not None and explanation != "DEFAULT" and verdict.result == "fail":
        if test.get("spec") == "7.1/6" and "ip6.arpa" in explanation:
            # The suite spells %{ir} nibbles in upper case; RFC 7208 §7.4's own example expands
            # "%{ir}.%{v}._spf.%{d2}" for an IPv6 client to lower-case nibbles, as we do.
            assert verdict.explanation.lower() == explanation.lower()
        else:
            assert verdict.explanation == explanation


async def test_the_lookup_limit_counts_every_dns_term() -> None:
    includes = " ".join(f"include:i{n}.limit.test" for n in range(11))
    zone: dict[str, Any] = {"limit.test": [{"TXT": f"v=spf1 {includes} -all"}]}
    for n in range(11):
        zone[f"i{n}.limit.test"] = [{"TXT": "v=spf1 -all"}]
    resolver = ZoneResolver(zone)
    verdict = await check_host(resolver, "192.0.2.1", "limit.test", "a@limit.test")
    assert verdict.result is SpfResult.PERMERROR
    assert "more than 10" in verdict.reason
    # The 11th include is never queried: evaluation stops at the limit.
    assert ("i10.limit.test", "TXT") not in resolver.queries


async def test_void_lookups_over_two_are_a_permerror() -> None:
    zone = {"void.test": [{"TXT": "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test +all"}]}
    verdict = await check_host(ZoneResolver(zone), "192.0.2.1", "void.test", "a@void.test")
    assert verdict.result is SpfResult.PERMERROR
    two = {"void.test": [{"TXT": "v=spf1 a:n1.void.test a:n2.void.test +all"}]}
    verdict = await check_host(ZoneResolver(two), "192.0.2.1", "void.test", "a@void.test")
    assert verdict.result is SpfResult.PASS


async def test_ipv4_mapped_client_is_checked_as_ipv4() -> None:
    zone = {"mapped.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]}
    verdict = await check_mail_from(
        ZoneResolver(zone), "::ffff:192.0.2.9", "x@mapped.test", "h.mapped.test"
    )
    assert verdict.result is SpfResult.PASS


class _Counting:
    """Counts questions, to show the limit holds however records are nested."""

    def __init__(self, inner: ZoneResolver) -> None:
        self.inner, self.count = inner, 0

    async def query(self, name: str, rtype: str) -> Answer:
        self.count += 1
        return await self.inner.query(name, rtype)


async def test_include_loops_end_in_permerror() -> None:
    zone = {"loop.test": [{"TXT": "v=spf1 include:loop.test -all"}]}
    counting = _Counting(ZoneResolver(zone))
    verdict = await check_host(counting, "192.0.2.1", "loop.test", "a@loop.test")
    assert verdict.result is SpfResult.PERMERROR
    assert counting.count <= 12
    assert Status.FOUND  # the enum is what Answer carries
