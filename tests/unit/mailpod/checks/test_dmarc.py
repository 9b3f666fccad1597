"""DMARC: record parsing, organisational domains from the bundled Public Suffix List, the
alignment table, and policy selection (p, sp, pct) over zone data."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mailpod.checks.dmarc import (
    DmarcResult,
    Policy,
    aligned,
    evaluate,
    from_domain,
    organizational_domain,
    parse_record,
)
from mailpod.checks.spf import SpfResult, SpfVerdict
from mailpod.dkim import DkimResult, DkimStatus
from tests.unit.mailpod.checks.zonedata import ZoneResolver


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("example.com", "example.com"),
        ("mail.eu.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("Example.CO.UK.", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own organisational domain
        ("x.y.city.kawasaki.jp", "city.kawasaki.jp"),  # an exception rule (!city.kawasaki.jp)
        ("a.b.unlisted-tld-zz", "b.unlisted-tld-zz"),  # the default "*" rule
    ],
)
def test_organizational_domain(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


# RFC 7489 §3.1.1 / §3.1.2: (authenticated domain, From domain, strict, aligned?)
ALIGNMENT = [
    ("example.com", "example.com", True, True),
    ("example.com", "example.com", False, True),
    ("mail.example.com", "example.com", True, False),
    ("mail.example.com", "example.com", False, True),
    ("example.com", "news.example.com", False, True),
    ("a.example.com", "b.example.com", False, True),
    ("a.example.com", "b.example.com", True, False),
    ("example.net", "example.com", False, False),
    ("example.co.uk", "other.co.uk", False, False),  # different registrations under a suffix
    ("EXAMPLE.com.", "example.COM", True, True),
]


@pytest.mark.parametrize(("authenticated", "header_from", "strict", "expected"), ALIGNMENT)
def test_alignment_table(
    authenticated: str, header_from: str, strict: bool, expected: bool
) -> None:
    assert aligned(authenticated, header_from, strict) is expected


def test_record_parsing() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=none; pct=20; adkim=s; aspf=r; rua=mailto:a@b.c")
    assert record.policy is Policy.REJECT and record.subdomain_policy is Policy.NONE
    assert (record.percent, record.strict_dkim, record.strict_spf) == (20, True, False)
    assert record.rua == ("mailto:a@b.c",)
    assert parse_record("v=DMARC1; p=quarantine").subdomain_policy is Policy.QUARANTINE
    # §6.6.3: no p= but a usable rua= reads as p=none.
    assert parse_record("v=DMARC1; rua=mailto:a@b.c").policy is Policy.NONE
    for bad in ("v=DMARC1", "v=DMARC2; p=reject", "p=reject", "v=DMARC1; p=maybe"):
        with pytest.raises(ValueError):
            parse_record(bad)


def test_from_domain_needs_exactly_one_address() -> None:
    assert from_domain(["Alice <alice@Example.COM>"]) == "example.com"
    assert from_domain(["a@x.test, b@x.test"]) == "x.test"
    assert from_domain(['"Doe, Jane" <jane@Y.test>']) == "y.test"
    assert from_domain(["<a@z.test> (comment)"]) == "z.test"
    assert from_domain(["a@x.test, b@y.test"]) is None
    assert from_domain(["a@x.test", "b@x.test"]) is None
    assert from_domain([]) is None


ZONE: dict[str, Any] = {
    "_dmarc.strict.test": [{"TXT": "v=DMARC1; p=reject; adkim=s; aspf=s"}],
    "_dmarc.relaxed.test": [{"TXT": "v=DMARC1; p=quarantine; sp=reject"}],
    "_dmarc.half.test": [{"TXT": "v=DMARC1; p=reject; pct=50"}],
    "_dmarc.twice.test": [{"TXT": "v=DMARC1; p=reject"}, {"TXT": "v=DMARC1; p=none"}],
    "_dmarc.timeout.test": ["TIMEOUT"],
}


def spf_pass(domain: str) -> SpfVerdict:
    return SpfVerdict(SpfResult.PASS, "mailfrom", domain)


def dkim_pass(domain: str) -> DkimResult:
    return DkimResult(DkimStatus.PASS, "", domain=domain, selector="s")


async def test_pass_through_either_aligned_identifier() -> None:
    resolver = ZoneResolver(ZONE)
    verdict = await evaluate(resolver, ["a@relaxed.test"], spf_pass("bounce.relaxed.test"), [])
    assert verdict.result is DmarcResult.PASS and verdict.spf_aligned
    verdict = await evaluate(resolver, ["a@relaxed.test"], None, [dkim_pass("relaxed.test")])
    assert verdict.result is DmarcResult.PASS and verdict.dkim_aligned


async def test_strict_mode_needs_exact_domains() -> None:
    resolver = ZoneResolver(ZONE)
    verdict = await evaluate(
        resolver, ["a@strict.test"], spf_pass("mail.strict.test"), [dkim_pass("x.strict.test")]
    )
    assert verdict.result is DmarcResult.FAIL and verdict.policy is Policy.REJECT


async def test_failing_signature_or_softfail_do_not_count() -> None:
    resolver = ZoneResolver(ZONE)
    failed = DkimResult(DkimStatus.FAIL, "bad", domain="relaxed.test")
    soft = SpfVerdict(SpfResult.SOFTFAIL, "mailfrom", "relaxed.test")
    verdict = await evaluate(resolver, ["a@relaxed.test"], soft, [failed])
    assert verdict.result is DmarcResult.FAIL and verdict.policy is Policy.QUARANTINE


async def test_subdomain_policy_applies_below_the_organizational_domain() -> None:
    verdict = await evaluate(ZoneResolver(ZONE), ["a@news.relaxed.test"], None, [])
    assert verdict.record_domain == "relaxed.test"
    assert verdict.result is DmarcResult.FAIL and verdict.policy is Policy.REJECT


async def test_pct_samples_and_falls_back_to_the_next_policy() -> None:
    resolver = ZoneResolver(ZONE)
    policies = [
        (await evaluate(resolver, ["a@half.test"], None, [], random.Random(seed))).policy
        for seed in range(200)
    ]
    assert set(policies) == {Policy.REJECT, Policy.QUARANTINE}
    assert 60 < policies.count(Policy.REJECT) < 140


async def test_no_record_several_records_and_dns_failure() -> None:
    resolver = ZoneResolver(ZONE)
    assert (await evaluate(resolver, ["a@nothing.test"], None, [])).result is DmarcResult.NONE
    several = await evaluate(resolver, ["a@twice.test"], None, [])
    assert several.result is DmarcResult.NONE and "2 DMARC records" in several.reason
    assert (await evaluate(resolver, ["a@timeout.test"], None, [])).result is DmarcResult.TEMPERROR
    assert (await evaluate(resolver, ["a@x.test", "b@x.test"], None, [])).result is (
        DmarcResult.PERMERROR
    )
