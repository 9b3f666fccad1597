"""The plan: ownership by value through the TXT registry, policies, drift, idempotency."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy, MailDomainSpec
from letterbox.dns.plan import (
    ActionKind,
    Plan,
    RegistryEntry,
    apply_to,
    parse_registry,
    plan,
    registry_name,
    slot,
)
from letterbox.dns.provider import RRset
from letterbox.render.dnsrecords import domain_records

ZONE = "example.com"
OWNER = "mail/example"
SPF = "v=spf1 mx ~all"
MX = "10 mail.example.com."
SOA = RRset(ZONE, "SOA", 3600, ("ns1.example.net. hostmaster.example.com. 1 2 3 4 5",))
NS = RRset(ZONE, "NS", 3600, ("ns1.example.net.", "ns2.example.net."))

T = RecordType


def rec(name: str, rtype: RecordType, value: str, ttl: int = 300) -> DnsRecord:
    return DnsRecord(name=name, type=rtype, value=value, ttl=ttl)


def values(rrsets: Sequence[RRset], name: str, rtype: str) -> set[str]:
    return {v for r in rrsets if r.name == name and r.type == rtype for v in r.values}


def run(
    desired: Sequence[DnsRecord],
    current: Sequence[RRset],
    policy: DnsPolicy = DnsPolicy.UPSERT_ONLY,
    owner: str = OWNER,
) -> tuple[Plan, list[RRset]]:
    steps = plan(desired, current, zone=ZONE, owner=owner, policy=policy)
    return steps, apply_to(current, steps.changes)


def published(desired: Sequence[DnsRecord], extra: Sequence[RRset] = ()) -> list[RRset]:
    """A zone where `desired` was published by OWNER (plus `extra` foreign RRsets)."""
    return run(desired, [SOA, NS, *extra])[1]


def kinds(steps: Plan) -> list[tuple[ActionKind, str, RecordType]]:
    return [(a.kind, a.name, a.type) for a in steps.actions]


# --- the whole domain ---------------------------------------------------------------------


def test_a_domain_into_an_empty_zone_then_nothing_more() -> None:
    spec = MailDomainSpec.model_validate(
        {"domain": ZONE, "tlsRpt": {"rua": ["mailto:tls@example.com"]}}
    )
    desired = domain_records(spec)
    steps, zone = run(desired, [SOA, NS])
    assert {a.kind for a in steps.actions} == {ActionKind.CREATE}
    assert len(steps.actions) == len(desired)
    for record in desired:
        assert record.value in values(zone, record.name, record.type.value)
    # Registry claims come before the records they claim (safe order for non-atomic APIs).
    first_record = next(i for i, c in enumerate(steps.changes) if "_letterbox" not in c.name)
    assert all("_letterbox." in c.name for c in steps.changes[:first_record])
    again, _ = run(desired, zone)
    assert again.empty and not again.actions and not again.conflicts
    assert values(zone, ZONE, "SOA") == set(SOA.values)
    assert values(zone, ZONE, "NS") == set(NS.values)


def test_soa_and_ns_are_never_planned_even_under_sync() -> None:
    steps, _ = run([], [SOA, NS], DnsPolicy.SYNC)
    assert steps.empty
    steps, _ = run([rec(ZONE, T.MX, MX)], [SOA, NS], DnsPolicy.SYNC)
    assert {c.type for c in steps.changes} <= {T.MX, T.TXT}


# --- ownership of values ------------------------------------------------------------------

FOREIGN_TXT = RRset(ZONE, "TXT", 300, ("google-site-verification=abc", "ms=ms123"))


@pytest.mark.parametrize(
    ("name", "current", "desired", "expect_kinds", "expect_values", "conflicts"),
    [
        (
            "foreign strings stay beside our SPF",
            [FOREIGN_TXT],
            [rec(ZONE, T.TXT, SPF)],
            [ActionKind.CREATE],
            {"google-site-verification=abc", "ms=ms123", SPF},
            0,
        ),
        (
            "a foreign SPF is a conflict, not overwritten",
            [RRset(ZONE, "TXT", 300, ("v=spf1 include:_spf.google.com -all",))],
            [rec(ZONE, T.TXT, SPF)],
            [],
            {"v=spf1 include:_spf.google.com -all"},
            1,
        ),
        (
            "a foreign identical value is left as it is and not claimed",
            [RRset(ZONE, "TXT", 300, (SPF,))],
            [rec(ZONE, T.TXT, SPF)],
            [],
            {SPF},
            0,
        ),
    ],
)
def test_values_of_others(
    name: str,
    current: list[RRset],
    desired: list[DnsRecord],
    expect_kinds: list[ActionKind],
    expect_values: set[str],
    conflicts: int,
) -> None:
    steps, zone = run(desired, [SOA, NS, *current])
    assert [a.kind for a in steps.actions] == expect_kinds, name
    assert values(zone, ZONE, "TXT") == expect_values, name
    assert len(steps.conflicts) == conflicts, name
    assert run(desired, zone)[0].empty, name


def test_a_conflict_names_the_foreign_value() -> None:
    current = [SOA, RRset(ZONE, "TXT", 300, ("v=spf1 -all",))]
    steps, _ = run([rec(ZONE, T.TXT, SPF)], current)
    assert steps.conflicts[0].held_by == ("v=spf1 -all",)
    assert "did not create" in steps.conflicts[0].message


def test_foreign_mx_and_cname() -> None:
    backup = RRset(ZONE, "MX", 300, ("20 backup.example.net.",))
    cname = RRset(f"autoconfig.{ZONE}", "CNAME", 300, ("elsewhere.example.net.",))
    desired = [
        rec(ZONE, T.MX, MX),
        rec(f"autoconfig.{ZONE}", T.CNAME, "mail.example.com."),
    ]
    steps, zone = run(desired, [SOA, backup, cname])
    assert values(zone, ZONE, "MX") == {MX, "20 backup.example.net."}
    assert values(zone, f"autoconfig.{ZONE}", "CNAME") == {"elsewhere.example.net."}
    assert [c.record.type for c in steps.conflicts] == [T.CNAME]


@pytest.mark.parametrize(
    ("existing", "wanted_record", "message"),
    [
        (
            RRset(f"mta-sts.{ZONE}", "A", 300, ("192.0.2.80",)),
            rec(f"mta-sts.{ZONE}", T.CNAME, "mail.example.com."),
            "already has A records",
        ),
        (
            RRset(f"_dmarc.{ZONE}", "CNAME", 300, ("dmarc.reports.example.net.",)),
            rec(f"_dmarc.{ZONE}", T.TXT, "v=DMARC1; p=none"),
            "is a CNAME Letterbox did not create",
        ),
        (
            RRset(f"autoconfig.{ZONE}", "HTTPS", 300, ("1 . alpn=h2",)),
            rec(f"autoconfig.{ZONE}", T.CNAME, "mail.example.com."),
            "already has HTTPS records",
        ),
    ],
)
def test_a_cname_never_shares_its_name(
    existing: RRset, wanted_record: DnsRecord, message: str
) -> None:
    steps, zone = run([wanted_record], [SOA, existing])
    assert steps.empty
    assert message in steps.conflicts[0].message
    assert zone == sorted([SOA, existing], key=lambda r: (r.name, r.type))


def test_another_owners_values_and_claims_are_untouched() -> None:
    other = "other/cluster"
    zone = run([rec(ZONE, T.MX, "20 other.example.com.")], [SOA], owner=other)[1]
    zone = run([rec(ZONE, T.MX, MX)], zone)[1]
    assert values(zone, ZONE, "MX") == {MX, "20 other.example.com."}
    registry = [parse_registry(t) for t in values(zone, registry_name(ZONE), "TXT")]
    assert {e.owner for e in registry if e is not None} == {OWNER, other}
    # Withdrawing ours leaves theirs, claim included.
    _, zone = run([], zone, DnsPolicy.SYNC)
    assert values(zone, ZONE, "MX") == {"20 other.example.com."}
    entries = [parse_registry(t) for t in values(zone, registry_name(ZONE), "TXT")]
    assert [e.owner for e in entries if e is not None] == [other]


# --- our own values over time -------------------------------------------------------------


def test_spec_change_updates_our_value_only() -> None:
    zone = published([rec(ZONE, T.TXT, SPF)], [FOREIGN_TXT])
    steps, zone = run([rec(ZONE, T.TXT, "v=spf1 mx -all")], zone)
    assert kinds(steps) == [(ActionKind.UPDATE, ZONE, T.TXT)]
    assert steps.actions[0].previous == (SPF,)
    assert values(zone, ZONE, "TXT") == {*FOREIGN_TXT.values, "v=spf1 mx -all"}
    assert not steps.drift


@pytest.mark.parametrize(
    ("edit", "previous"),
    [
        ("v=spf1 a mx ip4:192.0.2.1 ~all", ("v=spf1 a mx ip4:192.0.2.1 ~all",)),
        (None, ()),
    ],
    ids=["edited", "deleted"],
)
def test_hand_edits_of_our_values_are_repaired(edit: str | None, previous: tuple[str, ...]) -> None:
    zone = published([rec(ZONE, T.TXT, SPF)], [FOREIGN_TXT])
    edited = [
        RRset(r.name, r.type, r.ttl, (*FOREIGN_TXT.values, *([edit] if edit else [])))
        if (r.name, r.type) == (ZONE, "TXT")
        else r
        for r in zone
    ]
    steps, repaired = run([rec(ZONE, T.TXT, SPF)], edited)
    assert [(a.kind, a.previous) for a in steps.drift] == [(ActionKind.REPAIR, previous)]
    assert values(repaired, ZONE, "TXT") == {*FOREIGN_TXT.values, SPF}
    assert run([rec(ZONE, T.TXT, SPF)], repaired)[0].empty


def test_a_second_value_added_in_our_slot_is_removed() -> None:
    zone = published([rec(ZONE, T.TXT, SPF)])
    doubled = [
        RRset(r.name, r.type, r.ttl, (SPF, "v=spf1 -all"))
        if (r.name, r.type) == (ZONE, "TXT")
        else r
        for r in zone
    ]
    steps, repaired = run([rec(ZONE, T.TXT, SPF)], doubled)
    assert steps.drift[0].previous == ("v=spf1 -all",)
    assert values(repaired, ZONE, "TXT") == {SPF}


def test_upsert_only_keeps_unwanted_values_and_sync_withdraws_them() -> None:
    rpt = rec(f"_smtp._tls.{ZONE}", T.TXT, "v=TLSRPTv1; rua=mailto:t@example.com")
    zone = published([rec(ZONE, T.MX, MX), rpt])
    steps, kept = run([rec(ZONE, T.MX, MX)], zone)
    assert steps.empty
    assert [a.kind for a in steps.kept] == [ActionKind.DELETE]
    assert values(kept, rpt.name, "TXT") == {rpt.value}
    # The claim survived, so sync later still knows the value is ours.
    steps, synced = run([rec(ZONE, T.MX, MX)], kept, DnsPolicy.SYNC)
    assert kinds(steps) == [(ActionKind.DELETE, rpt.name, T.TXT)]
    assert values(synced, rpt.name, "TXT") == set()
    assert values(synced, registry_name(rpt.name), "TXT") == set()
    assert values(synced, ZONE, "MX") == {MX}
    assert run([rec(ZONE, T.MX, MX)], synced, DnsPolicy.SYNC)[0].empty


def test_sync_never_deletes_values_of_others() -> None:
    zone = published([rec(ZONE, T.TXT, SPF)], [FOREIGN_TXT])
    _, zone = run([], zone, DnsPolicy.SYNC)
    assert values(zone, ZONE, "TXT") == set(FOREIGN_TXT.values)
    assert not any(r.name.startswith("_letterbox.") for r in zone)


def test_a_ttl_change_is_planned_once() -> None:
    zone = published([rec(ZONE, T.MX, MX, ttl=300)])
    steps, zone = run([rec(ZONE, T.MX, MX, ttl=3600)], zone)
    assert kinds(steps) == [(ActionKind.TTL, ZONE, T.MX)]
    assert next(r.ttl for r in zone if (r.name, r.type) == (ZONE, "MX")) == 3600
    assert run([rec(ZONE, T.MX, MX, ttl=3600)], zone)[0].empty


def test_per_record_ttls_only_count_for_our_values() -> None:
    """Cloudflare keeps a TTL per record: a foreign value's TTL is not ours to change."""
    zone = published([rec(ZONE, T.TXT, SPF, ttl=3600)], [FOREIGN_TXT])
    per_value = [
        RRset(r.name, r.type, 1, r.values, tuple(3600 if v == SPF else 1 for v in r.values))
        if (r.name, r.type) == (ZONE, "TXT")
        else r
        for r in zone
    ]
    assert run([rec(ZONE, T.TXT, SPF, ttl=3600)], per_value)[0].empty
    steps, _ = run([rec(ZONE, T.TXT, SPF, ttl=600)], per_value)
    assert [c.add for c in steps.changes] == [(SPF,)]


def test_names_compare_case_insensitively_and_txt_exactly() -> None:
    zone = published([rec(ZONE, T.MX, MX)])
    shouting = [
        RRset(r.name.upper(), r.type, r.ttl, tuple(v.upper() for v in r.values))
        if r.type == "MX"
        else r
        for r in zone
    ]
    assert run([rec(ZONE, T.MX, MX)], shouting)[0].empty
    assert slot(T.TXT, "v=spf1 mx") != slot(T.TXT, "V=SPF2 mx")


def test_records_outside_the_zone_are_conflicts() -> None:
    steps, _ = run([rec("example.org", T.MX, MX)], [SOA])
    assert steps.empty
    assert "outside the zone" in steps.conflicts[0].message


# --- the registry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (
            "heritage=letterbox,owner=a/b,type=TXT,own=0123abcd:0123456789ab",
            RegistryEntry("a/b", T.TXT, {"0123abcd": "0123456789ab"}),
        ),
        ("heritage=external-dns,external-dns/owner=default", None),
        ("google-site-verification=abc", None),
        ("heritage=letterbox,owner=a/b,type=NS,own=", None),
        ("v=spf1 mx ~all", None),
    ],
)
def test_registry_strings(text: str, parsed: RegistryEntry | None) -> None:
    assert parse_registry(text) == parsed
    if parsed is not None:
        assert parse_registry(parsed.text()) == parsed


def test_registry_holds_no_record_content() -> None:
    zone = published([rec(f"s1._domainkey.{ZONE}", T.TXT, "v=DKIM1; k=ed25519; p=SECRETISH")])
    registry = values(zone, registry_name(f"s1._domainkey.{ZONE}"), "TXT")
    assert registry and all("SECRETISH" not in t and "DKIM1" not in t for t in registry)


def test_owner_must_be_a_simple_token() -> None:
    with pytest.raises(ValueError, match="owner"):
        plan([], [], zone=ZONE, owner="a,b=c")
