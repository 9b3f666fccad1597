"""letterbox.reconcile.publishing's decisions without a server: which names count as DKIM
names, which providers are called, what the sweep plans against a zone listing (a provider kept
in memory, changed value by value with `plan.apply_to` as real providers change theirs), and
how it treats a provider that fails. The same decisions against a real PowerDNS are in
tests/integration/test_publishing.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsProviderKind, DnsSpec, MailDomain
from letterbox.api.meta import ConditionStatus
from letterbox.dns.plan import ActionKind, apply_to, plan, registry_name
from letterbox.dns.provider import Change, DnsProviderError, InvalidCredentials, RRset
from letterbox.reconcile.publishing import (
    calls_provider,
    handed_to_external_dns,
    is_dkim_name,
    publish_and_sweep,
    sweep_dkim,
)

ZONE = "example.com"
OWNER = "mail/example"
OTHER = "team-b/example"


class MemoryProvider:
    """A zone held in memory; `failures` are raised by the next calls, one each."""

    def __init__(self, rrsets: Sequence[RRset], failures: Sequence[Exception] = ()) -> None:
        self.rrsets = list(rrsets)
        self.failures = list(failures)
        self.applied: list[tuple[Change, ...]] = []
        self.listings = 0

    async def records(self, zone: str) -> list[RRset]:
        assert zone == ZONE
        self.listings += 1
        if self.failures:
            raise self.failures.pop(0)
        return list(self.rrsets)

    async def apply(self, zone: str, changes: Sequence[Change]) -> None:
        assert zone == ZONE
        self.applied.append(tuple(changes))
        self.rrsets = apply_to(self.rrsets, changes)

    async def aclose(self) -> None:
        pass

    def values(self, name: str, rtype: str = "TXT") -> set[str]:
        return {v for r in self.rrsets if (r.name, r.type) == (name, rtype) for v in r.values}


def txt(name: str, value: str) -> DnsRecord:
    return DnsRecord(name, RecordType.TXT, value, 300)


OURS = [
    DnsRecord(ZONE, RecordType.MX, "10 mail.example.com.", 300),
    txt(ZONE, "v=spf1 mx -all"),
    txt(f"_dmarc.{ZONE}", "v=DMARC1; p=reject"),
    txt(f"old._domainkey.{ZONE}", "v=DKIM1; k=ed25519; p=T0xE"),
    txt(f"new._domainkey.{ZONE}", "v=DKIM1; k=ed25519; p=TkVX"),
]
THEIRS = [txt(f"team._domainkey.{ZONE}", "v=DKIM1; k=ed25519; p=VEVBTQ==")]


def zone_with(ours: Sequence[DnsRecord], theirs: Sequence[DnsRecord] = THEIRS) -> list[RRset]:
    """A zone where `ours` were published by OWNER and `theirs` by OTHER, plus a foreign
    selector nobody claims and the zone's SOA and NS."""
    rrsets = [
        RRset(ZONE, "SOA", 3600, ("ns1.example.com. admin.example.com. 1 3600 600 86400 300",)),
        RRset(ZONE, "NS", 3600, ("ns1.example.com.",)),
        RRset(f"google._domainkey.{ZONE}", "TXT", 300, ("v=DKIM1; k=rsa; p=R09PRw==",)),
    ]
    for owner, records in ((OWNER, ours), (OTHER, theirs)):
        steps = plan(records, rrsets, zone=ZONE, owner=owner)
        rrsets = apply_to(rrsets, steps.changes)
    return rrsets


@pytest.mark.parametrize(
    ("name", "dkim"),
    [
        ("s1._domainkey.example.com", True),
        ("S1._DomainKey.Example.Com.", True),  # DNS names compare case-insensitively
        ("a.b._domainkey.example.com.", True),
        ("_domainkey.example.com", True),
        ("my_domainkey.example.com", False),
        ("s1._domainkeys.example.com", False),
        ("example.com", False),
    ],
)
def test_dkim_names_are_names_with_a_domainkey_label(name: str, dkim: bool) -> None:
    assert is_dkim_name(name) is dkim


def test_only_api_providers_are_called() -> None:
    secret = {"credentialsSecretRef": {"name": "dns", "key": "credential"}}
    settings = {
        "rfc2136": {"rfc2136": {"server": "ns1.example.net"}},
        "powerdns": {"powerdns": {"url": "http://pdns.example.net:8081"}, **secret},
        "cloudflare": secret,
    }
    called = {
        kind: calls_provider(
            DnsSpec.model_validate({"provider": kind.value, **settings.get(kind.value, {})})
        )
        for kind in DnsProviderKind
    }
    assert called == {
        DnsProviderKind.MANUAL: False,
        DnsProviderKind.EXTERNAL_DNS: False,
        DnsProviderKind.RFC2136: True,
        DnsProviderKind.POWERDNS: True,
        DnsProviderKind.CLOUDFLARE: True,
    }


async def test_the_sweep_plans_only_our_unwanted_dkim_values() -> None:
    provider = MemoryProvider(zone_with(OURS))
    before = list(provider.rrsets)
    # The domain still wants its MX, SPF and DMARC and the new key; the old key retired.
    wanted = [r for r in OURS if not r.name.startswith("old.")]
    steps = await sweep_dkim(provider, wanted, zone=ZONE, owner=OWNER, delays=())

    assert [(a.kind, a.name) for a in steps.actions] == [
        (ActionKind.DELETE, f"old._domainkey.{ZONE}")
    ]
    assert provider.values(f"old._domainkey.{ZONE}") == set()
    assert not any(OWNER in v for v in provider.values(registry_name(f"old._domainkey.{ZONE}"))), (
        "the claim goes with the record"
    )
    untouched = [r for r in before if "old._domainkey" not in r.name]
    assert [r for r in provider.rrsets if "old._domainkey" not in r.name] == untouched

    # Nothing more to do: no write at all.
    writes = len(provider.applied)
    again = await sweep_dkim(provider, wanted, zone=ZONE, owner=OWNER, delays=())
    assert again.empty and len(provider.applied) == writes


async def test_the_sweep_never_plans_non_dkim_names_even_when_nothing_is_wanted() -> None:
    provider = MemoryProvider(zone_with(OURS))
    steps = await sweep_dkim(provider, [], zone=ZONE, owner=OWNER, delays=())
    assert {a.name for a in steps.actions} == {f"old._domainkey.{ZONE}", f"new._domainkey.{ZONE}"}
    assert {a.kind for a in steps.actions} == {ActionKind.DELETE}
    assert provider.values(ZONE, "MX") == {"10 mail.example.com."}
    assert provider.values(ZONE) == {"v=spf1 mx -all"}
    assert provider.values(f"_dmarc.{ZONE}") == {"v=DMARC1; p=reject"}
    assert provider.values(f"team._domainkey.{ZONE}") == {"v=DKIM1; k=ed25519; p=VEVBTQ=="}
    assert provider.values(f"google._domainkey.{ZONE}") == {"v=DKIM1; k=rsa; p=R09PRw=="}


async def test_the_sweep_publishes_nothing_new() -> None:
    """A wanted DKIM record not in the zone yet is for the publishing pass (with its conflict
    checks and policy), not for the sweep, which only withdraws."""
    provider = MemoryProvider(zone_with([]))
    fresh = txt(f"fresh._domainkey.{ZONE}", "v=DKIM1; k=ed25519; p=RlJFU0g=")
    steps = await sweep_dkim(provider, [fresh], zone=ZONE, owner=OWNER, delays=())
    assert steps.empty and not provider.applied
    assert provider.values(fresh.name) == set()


async def test_a_temporary_failure_is_retried_after_each_delay() -> None:
    provider = MemoryProvider(
        zone_with(OURS), failures=[DnsProviderError("timeout"), DnsProviderError("502")]
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    wanted = [r for r in OURS if not r.name.startswith("old.")]
    steps = await sweep_dkim(
        provider, wanted, zone=ZONE, owner=OWNER, delays=(1.0, 2.0, 4.0), sleep=sleep
    )
    assert slept == [1.0, 2.0] and provider.listings == 3
    assert [a.name for a in steps.actions] == [f"old._domainkey.{ZONE}"]


async def test_a_permanent_failure_is_not_retried() -> None:
    provider = MemoryProvider(zone_with(OURS), failures=[InvalidCredentials("bad key")])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with pytest.raises(InvalidCredentials):
        await sweep_dkim(provider, [], zone=ZONE, owner=OWNER, delays=(1.0,), sleep=sleep)
    assert slept == [] and not provider.applied


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("manual", ConditionStatus.UNKNOWN, "Manual"),
        ("externalDNS", ConditionStatus.TRUE, "HandedToExternalDNS"),
    ],
)
async def test_providers_without_an_api_are_neither_swept_nor_called(
    kind: str, status: ConditionStatus, reason: str
) -> None:
    spec = DnsSpec.model_validate({"provider": kind})
    # A credential, even a wrong one, changes nothing: no provider is built.
    outcome = await publish_and_sweep(
        spec, OURS, zone=ZONE, owner=OWNER, credential="not-used", authoritative=[]
    )
    assert (outcome.status, outcome.reason) == (status, reason)
    assert not outcome.temporary and not outcome.changed


async def test_an_empty_credential_is_the_condition_before_any_call() -> None:
    spec = DnsSpec.model_validate(
        {
            "provider": "powerdns",
            # Nothing listens here: a call would be a ProviderError, not InvalidCredentials.
            "powerdns": {"url": "http://127.0.0.1:9"},
            "credentialsSecretRef": {"name": "pdns", "key": "api-key"},
        }
    )
    outcome = await publish_and_sweep(spec, OURS, zone=ZONE, owner=OWNER, credential="")
    assert (outcome.status, outcome.reason) == (ConditionStatus.FALSE, "InvalidCredentials")
    assert not outcome.temporary
    assert "Secret pdns key api-key" in outcome.message


@pytest.mark.parametrize(
    ("kind", "handed"),
    [("externalDNS", True), ("manual", False), ("powerdns", False), (None, False)],
)
async def test_a_stored_external_dns_condition_means_an_endpoint_may_exist(
    kind: str | None, handed: bool
) -> None:
    """The status the externalDNS outcome writes is how a fresh process learns of an endpoint
    it did not write; any other DNSPublished (or none) is not."""
    conditions = []
    if kind is not None:
        spec = DnsSpec.model_validate(
            {
                "provider": kind,
                # Never called: an empty credential is the condition first.
                "powerdns": {"url": "http://127.0.0.1:9"},
                "credentialsSecretRef": {"name": "pdns", "key": "api-key"},
            }
            if kind == "powerdns"
            else {"provider": kind}
        )
        outcome = await publish_and_sweep(spec, OURS, zone=ZONE, owner=OWNER, credential="")
        type_, status, reason, message = outcome.condition
        conditions.append(
            {"type": type_, "status": status.value, "reason": reason, "message": message}
        )
    domain = MailDomain.model_validate(
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "MailDomain",
            "metadata": {"name": "d"},
            "spec": {"domain": "example.org"},
            "status": {"conditions": conditions},
        }
    )
    assert handed_to_external_dns(domain) is handed
