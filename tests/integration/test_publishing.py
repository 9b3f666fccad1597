"""The namespace pass's DNS decisions (letterbox.reconcile.publishing) against a real PowerDNS,
through its HTTP API and through RFC 2136 + TSIG: which DKIM records the sweep withdraws (only
our values at `_domainkey` names that no key wants, even under upsert-only), what it never
touches (other people's and other owners' values, our non-DKIM records), what a deleted
domain's withdrawal removes, and which records count as live.

Each test gets its own zone, seeded with someone else's records (tests.integration.
test_dns_providers.seed) plus a foreign DKIM selector.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy, DnsSpec, MailDomainSpec
from letterbox.api.meta import ConditionStatus
from letterbox.dns.plan import ActionKind, registry_name
from letterbox.dns.provider import DnsProvider, InvalidCredentials
from letterbox.dns.publish import DnsOutcome, provider_for, publish_domain
from letterbox.material import generate_dkim_key
from letterbox.reconcile.publishing import (
    live_records,
    publish_and_sweep,
    sweep_dkim,
    withdraw_domain,
)
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.dnsrecords import domain_records
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns
from tests.integration.test_dns_providers import Backend, make_backend

pytestmark = pytest.mark.integration

OWNER = "mail/example"
OTHER_OWNER = "other-cluster/example"
FOREIGN_DKIM = "v=DKIM1; k=rsa; p=Rm9yZWlnbktleQ=="
FOREIGN_AT_OURS = "v=DKIM1; k=ed25519; p=c29tZW9uZSBlbHNl"
NO_DELAY: tuple[float, ...] = ()


@pytest.fixture(params=["powerdns-api", "powerdns-rfc2136"])
def backend(request: pytest.FixtureRequest, powerdns: PowerDns) -> Iterator[Backend]:
    found = make_backend(request.param, request, powerdns)
    # Someone else's selector in the same zone.
    powerdns.set_rrsets(
        found.zone, [(f"google._domainkey.{found.zone}", "TXT", 300, [f'"{FOREIGN_DKIM}"'])]
    )
    yield found
    powerdns.delete_zone(found.zone)


@pytest.fixture(scope="module")
def pems() -> dict[str, tuple[DkimAlgorithm, str]]:
    return {
        "s1": (DkimAlgorithm.RSA_2048, generate_dkim_key(DkimAlgorithm.RSA_2048)),
        "s2": (DkimAlgorithm.ED25519, generate_dkim_key(DkimAlgorithm.ED25519)),
    }


def spec_for(zone: str, *, tls_rpt: bool = True) -> MailDomainSpec:
    rua = [f"mailto:tls@{zone}"] if tls_rpt else []
    return MailDomainSpec.model_validate({"domain": zone, "tlsRpt": {"rua": rua}})


def records_for(
    spec: MailDomainSpec, pems: dict[str, tuple[DkimAlgorithm, str]], *selectors: str
) -> list[DnsRecord]:
    keys = [DkimKeyMaterial(spec.domain, s, *pems[s]) for s in selectors]
    return domain_records(spec, keys)


def provider(backend: Backend) -> DnsProvider:
    found = provider_for(backend.spec, backend.credential)
    assert found is not None
    return found


def dkim(backend: Backend, selector: str) -> set[str]:
    return backend.values(f"{selector}._domainkey.{backend.zone}", "TXT")


def registry(backend: Backend, name: str) -> set[str]:
    return backend.values(registry_name(name), "TXT")


def snapshot(backend: Backend) -> dict[tuple[str, str], set[str]]:
    """What the server answers at every name the tests care about."""
    zone = backend.zone
    names = [
        zone,
        f"_dmarc.{zone}",
        f"_mta-sts.{zone}",
        f"_smtp._tls.{zone}",
        *(f"{s}._domainkey.{zone}" for s in ("s1", "s2", "b1", "google")),
    ]
    return {(n, t): backend.values(n, t) for n in names for t in ("TXT", "MX")}


async def publish(
    backend: Backend, records: list[DnsRecord], *, owner: str = OWNER
) -> ConditionStatus:
    outcome = await publish_domain(
        backend.spec,
        records,
        zone=backend.zone,
        owner=owner,
        credential=backend.credential,
        authoritative=[backend.server],
        delays=NO_DELAY,
    )
    assert outcome.reason == "Published", outcome
    return outcome.status


async def publish_sweeping(backend: Backend, records: list[DnsRecord]) -> DnsOutcome:
    """A whole publishing pass as the operator runs it: publish, then sweep retired keys."""
    return await publish_and_sweep(
        backend.spec,
        records,
        zone=backend.zone,
        owner=OWNER,
        credential=backend.credential,
        authoritative=[backend.server],
    )


async def test_the_sweep_withdraws_only_our_unwanted_dkim_values(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    zone = backend.zone
    spec = spec_for(zone)
    both = records_for(spec, pems, "s1", "s2")
    await publish(backend, both)
    # Another cluster publishes its own selector into the zone; someone adds a value by hand
    # at one of our DKIM names.
    other = DnsRecord(f"b1._domainkey.{zone}", RecordType.TXT, FOREIGN_DKIM, 300, "DKIM")
    await publish(backend, [other], owner=OTHER_OWNER)
    s2_ours = next(r.value for r in both if r.name.startswith("s2."))
    backend.hand_set(
        f"s2._domainkey.{zone}",
        "TXT",
        [f'"{s2_ours}"', f'"{FOREIGN_AT_OURS}"'],
    )
    assert dkim(backend, "s2") == {s2_ours, FOREIGN_AT_OURS}
    before = snapshot(backend)

    # s2's key retired: the domain still wants every other record.
    wanted = records_for(spec, pems, "s1")
    dns = provider(backend)
    try:
        steps = await sweep_dkim(dns, wanted, zone=zone, owner=OWNER, delays=NO_DELAY)
        assert [(a.kind, a.name, a.previous) for a in steps.actions] == [
            (ActionKind.DELETE, f"s2._domainkey.{zone}", (s2_ours,))
        ]
        after = snapshot(backend)
        assert after.pop((f"s2._domainkey.{zone}", "TXT")) == {FOREIGN_AT_OURS}
        before.pop((f"s2._domainkey.{zone}", "TXT"))
        assert after == before, "only our s2 value changed"
        assert not any(OWNER in s for s in registry(backend, f"s2._domainkey.{zone}"))
        assert any(OWNER in s for s in registry(backend, f"s1._domainkey.{zone}"))
        assert any(OTHER_OWNER in s for s in registry(backend, f"b1._domainkey.{zone}"))

        # Idempotent: nothing left to sweep.
        again = await sweep_dkim(dns, wanted, zone=zone, owner=OWNER, delays=NO_DELAY)
        assert again.empty and not again.actions

        # The DKIMKey deleted (no key at all): s1 goes too; MX, SPF, DMARC, MTA-STS, TLS-RPT
        # are no DKIM names, so the sweep leaves them although `wanted` holds none of them.
        before = snapshot(backend)
        steps = await sweep_dkim(dns, [], zone=zone, owner=OWNER, delays=NO_DELAY)
        assert {(a.kind, a.name) for a in steps.actions} == {
            (ActionKind.DELETE, f"s1._domainkey.{zone}")
        }
        after = snapshot(backend)
        assert after.pop((f"s1._domainkey.{zone}", "TXT")) == set()
        before.pop((f"s1._domainkey.{zone}", "TXT"))
        assert after == before
        assert dkim(backend, "google") == {FOREIGN_DKIM}
        assert dkim(backend, "b1") == {FOREIGN_DKIM}
    finally:
        await dns.aclose()


async def test_a_retired_key_is_withdrawn_even_under_upsert_only(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    zone = backend.zone
    spec = spec_for(zone)
    assert backend.spec.policy is DnsPolicy.UPSERT_ONLY
    both = records_for(spec, pems, "s1", "s2")
    outcome = await publish_sweeping(backend, both)
    assert (outcome.status, outcome.reason) == (ConditionStatus.TRUE, "Published"), outcome
    s1 = next(r.value for r in both if r.name.startswith("s1."))
    assert dkim(backend, "s1") == {s1}

    # upsert-only on its own keeps a record the domain no longer wants...
    only_s2 = records_for(spec, pems, "s2")
    await publish(backend, only_s2)
    assert dkim(backend, "s1") == {s1}

    # ...while the pass withdraws the retired key's record, and only that: TLS-RPT, dropped
    # from the spec in the same pass, stays published under upsert-only.
    fewer = records_for(spec_for(zone, tls_rpt=False), pems, "s2")
    assert not any(r.purpose == "TLS-RPT" for r in fewer)
    outcome = await publish_sweeping(backend, fewer)
    assert (outcome.status, outcome.reason) == (ConditionStatus.TRUE, "Published"), outcome
    assert dkim(backend, "s1") == set()
    assert len(dkim(backend, "s2")) == 1
    assert backend.values(f"_smtp._tls.{zone}", "TXT") == {f"v=TLSRPTv1; rua=mailto:tls@{zone}"}
    assert dkim(backend, "google") == {FOREIGN_DKIM}


async def test_a_refused_sweep_is_the_condition_and_publishes_nothing(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    zone = backend.zone
    records = records_for(spec_for(zone), pems, "s1")
    before = snapshot(backend)
    for spec, credential in backend.wrong:
        outcome = await publish_and_sweep(
            spec, records, zone=zone, owner=OWNER, credential=credential
        )
        assert outcome.status is ConditionStatus.FALSE
        assert outcome.reason == "InvalidCredentials", outcome
        assert not outcome.temporary
        if credential:
            assert credential not in outcome.message
    assert snapshot(backend) == before


async def test_withdrawing_a_domain_removes_every_value_of_ours_and_nothing_else(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    zone = backend.zone
    await publish(backend, records_for(spec_for(zone), pems, "s1", "s2"))
    other = DnsRecord(f"b1._domainkey.{zone}", RecordType.TXT, FOREIGN_DKIM, 300, "DKIM")
    await publish(backend, [other], owner=OTHER_OWNER)

    # manual and externalDNS hold nothing at a provider: nothing to withdraw, nothing called.
    for kind in ("manual", "externalDNS"):
        nothing = await withdraw_domain(
            DnsSpec.model_validate({"provider": kind}), zone=zone, owner=OWNER, credential=None
        )
        assert nothing.empty and not nothing.actions
    # A refused credential raises (the finalizer keeps the domain and retries).
    spec, credential = backend.wrong[0]
    with pytest.raises(InvalidCredentials):
        await withdraw_domain(spec, zone=zone, owner=OWNER, credential=credential)
    assert dkim(backend, "s1")

    steps = await withdraw_domain(
        backend.spec, zone=zone, owner=OWNER, credential=backend.credential
    )
    assert {a.kind for a in steps.actions} == {ActionKind.DELETE}
    assert backend.values(zone, "MX") == {"20 backup.example.net."}
    assert backend.values(zone, "TXT") == {"google-site-verification=abc123"}
    for name in (f"_dmarc.{zone}", f"_mta-sts.{zone}", f"_smtp._tls.{zone}"):
        assert backend.values(name, "TXT") == set(), name
    assert dkim(backend, "s1") == dkim(backend, "s2") == set()
    assert dkim(backend, "google") == {FOREIGN_DKIM}
    assert dkim(backend, "b1") == {FOREIGN_DKIM}
    assert any(OTHER_OWNER in s for s in registry(backend, f"b1._domainkey.{zone}"))
    assert not any(OWNER in s for s in registry(backend, zone))
    again = await withdraw_domain(
        backend.spec, zone=zone, owner=OWNER, credential=backend.credential
    )
    assert again.empty


async def test_live_records_are_those_every_authoritative_server_answers(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    zone = backend.zone
    records = records_for(spec_for(zone), pems, "s1")
    await publish(backend, records)
    s1 = next(r for r in records if r.purpose == "DKIM")
    unpublished = DnsRecord(f"s9._domainkey.{zone}", RecordType.TXT, FOREIGN_DKIM, 300)
    changed = DnsRecord(s1.name, s1.type, FOREIGN_AT_OURS, s1.ttl)

    live = await live_records([s1, unpublished, changed], zone=zone, authoritative=[backend.server])
    assert live == {s1}
    assert await live_records([], zone=zone, authoritative=None) == frozenset()
    # One of two servers not answering: not live as far as anyone can tell.
    silent = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert await live_records([s1], zone=zone, authoritative=[backend.server, silent]) == set()


async def test_a_cname_at_a_new_selector_is_a_conflict_not_a_provider_error(
    backend: Backend, pems: dict[str, tuple[DkimAlgorithm, str]]
) -> None:
    """A selector delegated by CNAME (as hosted mail services have users do) is someone else's
    name: the sweep must not write a new key's TXT beside it behind the plan's back."""
    zone = backend.zone
    delegated = f"s1._domainkey.{zone}"
    backend.hand_set(delegated, "CNAME", ["s1.dkim.mail-host.example.net."])
    records = records_for(spec_for(zone), pems, "s1")
    outcome = await publish_sweeping(backend, records)
    assert (outcome.status, outcome.reason) == (ConditionStatus.FALSE, "RecordConflict"), outcome
    assert delegated in outcome.message
    assert backend.values(delegated, "CNAME") == {"s1.dkim.mail-host.example.net."}
    assert backend.values(f"_dmarc.{zone}", "TXT"), "the rest is published"
