"""DNS publishing against real authoritative servers: PowerDNS through its HTTP API and through
RFC 2136 + TSIG, and BIND 9 through RFC 2136 + TSIG.

Each backend gets a zone that already holds other people's records (a verification string in
the apex TXT, a backup MX) and must: publish a whole domain (a DKIM record longer than 255
bytes included), do nothing on a second pass, repair hand edits and say so, update what the spec
changed without touching the rest, keep what upsert-only keeps, withdraw only our values, and
refuse to work with wrong or missing credentials, changing nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy, DnsSpec, MailDomainSpec
from letterbox.api.meta import ConditionStatus
from letterbox.dns.plan import ActionKind
from letterbox.dns.provider import Change, InvalidCredentials
from letterbox.dns.publish import (
    authoritative_servers,
    check_propagation,
    provider_for,
    publish_domain,
    withdraw,
)
from letterbox.dns.rfc2136 import presentation
from letterbox.material import generate_dkim_key
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.dnsrecords import domain_records
from tests.harness.bind import Bind
from tests.harness.powerdns import PowerDns, RRset

FOREIGN_TXT = "google-site-verification=abc123"
FOREIGN_MX = "20 backup.example.net."
NO_DELAY: tuple[float, ...] = ()
BIND_ZONES = [f"z{i}.bind-dns-providers.test" for i in range(6)]
_counter = itertools.count()


BARE_ZONE = "bare.bind-dns-providers.test"


def seed(zone: str, *, mail_host: bool = True) -> list[RRset]:
    """Someone's zone before Letterbox: a verification string, a backup MX, the name server
    and (usually) the mail host's address."""
    return [
        (zone, "TXT", 300, [f'"{FOREIGN_TXT}"']),
        (zone, "MX", 300, [FOREIGN_MX]),
        (f"ns1.{zone}", "A", 300, ["127.0.0.1"]),
        *([(f"mail.{zone}", "A", 300, ["192.0.2.25"])] if mail_host else []),
    ]


def ask(port: int, name: str, rtype: str) -> set[str]:
    """What the server answers, TXT strings joined."""
    query = dns.message.make_query(name.rstrip(".") + ".", rtype)
    response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5.0)
    return {
        presentation(rdata)
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.from_text(rtype)
        for rdata in rrset
    }


def nsupdate(port: int, zone: str, key: tuple[str, str], edit: Callable[[Any], None]) -> None:
    """A hand edit, as an admin with nsupdate and the zone's key would make it."""
    keyring = dns.tsigkeyring.from_text({key[0]: ("hmac-sha256", key[1])})
    update = dns.update.UpdateMessage(zone + ".", keyring=keyring, keyalgorithm="hmac-sha256")
    edit(update)
    response = dns.query.tcp(update, "127.0.0.1", port=port, timeout=5.0)
    assert response.rcode() == 0, response


@dataclass
class Backend:
    """One zone on one server, reached the way a MailDomain's spec.dns says."""

    zone: str
    port: int
    spec: DnsSpec
    credential: str
    admin_key: tuple[str, str] | None
    """A key an admin can make hand edits with (None: edit through the PowerDNS API)."""
    pdns: PowerDns | None
    wrong: list[tuple[DnsSpec, str | None]]
    """Specs + credentials the server must refuse."""

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def values(self, name: str, rtype: str) -> set[str]:
        return ask(self.port, name, rtype)

    def hand_set(self, name: str, rtype: str, contents: Sequence[str]) -> None:
        """Replace an RRset by hand (contents in zone-file syntax)."""
        if self.pdns is not None:
            self.pdns.set_rrsets(self.zone, [(name, rtype, 300, list(contents))])
            return
        assert self.admin_key is not None

        def edit(update: Any) -> None:
            update.delete(name + ".", rtype)
            for content in contents:
                update.add(name + ".", 300, rtype, content)

        nsupdate(self.port, self.zone, self.admin_key, edit)


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    zones = {zone: seed(zone) for zone in BIND_ZONES}
    zones[BARE_ZONE] = seed(BARE_ZONE, mail_host=False)
    with Bind(zones) as server:
        yield server


_bind_zones = iter(BIND_ZONES)


def rfc2136_spec(server: str, key: str | None) -> DnsSpec:
    settings: dict[str, Any] = {"server": server}
    data: dict[str, Any] = {"provider": "rfc2136", "rfc2136": settings}
    if key is not None:
        settings["tsigKeyName"] = key
        data["credentialsSecretRef"] = {"name": "dns", "key": "tsig"}
    return DnsSpec.model_validate(data)


def make_backend(kind: str, request: pytest.FixtureRequest, powerdns: PowerDns) -> Backend:
    if kind == "bind-rfc2136":
        server: Bind = request.getfixturevalue("bind")
        zone = next(_bind_zones)
        key = (server.key_name, server.secret)
        return Backend(
            zone,
            server.port,
            rfc2136_spec(server.nameserver, server.key_name),
            server.secret,
            key,
            None,
            [
                (rfc2136_spec(server.nameserver, server.other_key_name), server.other_secret),
                (rfc2136_spec(server.nameserver, server.key_name), "c2VjcmV0c2VjcmV0c2VjcmV0"),
                (rfc2136_spec(server.nameserver, None), None),
            ],
        )
    zone = f"z{next(_counter)}.{kind}.test"
    powerdns.create_zone(zone, seed(zone), nameservers=(f"ns1.{zone}.",))
    if kind == "powerdns-api":
        spec = DnsSpec.model_validate(
            {
                "provider": "powerdns",
                "powerdns": {"url": f"http://127.0.0.1:{powerdns.api_port}"},
                "credentialsSecretRef": {"name": "pdns", "key": "api-key"},
            }
        )
        return Backend(
            zone, powerdns.dns_port, spec, powerdns.api_key, None, powerdns, [(spec, "wrong-key")]
        )
    key_name = f"letterbox-{zone.split('.')[0]}"
    secret = powerdns.allow_updates(zone, key_name)
    # The provider lists the zone by AXFR signed with the same key (TSIG-ALLOW-AXFR).
    powerdns.api("PUT", f"/zones/{zone}.", {"master_tsig_key_ids": [f"{key_name}."]})
    return Backend(
        zone,
        powerdns.dns_port,
        rfc2136_spec(powerdns.nameserver, key_name),
        secret,
        None,
        powerdns,
        [
            (rfc2136_spec(powerdns.nameserver, key_name), "c2VjcmV0c2VjcmV0c2VjcmV0"),
            (rfc2136_spec(powerdns.nameserver, None), None),
        ],
    )


@pytest.fixture(params=["powerdns-api", "powerdns-rfc2136", "bind-rfc2136"])
def backend(request: pytest.FixtureRequest, powerdns: PowerDns) -> Backend:
    return make_backend(request.param, request, powerdns)


@pytest.fixture(params=["powerdns-rfc2136", "bind-rfc2136"])
def rfc2136_backend(request: pytest.FixtureRequest, powerdns: PowerDns) -> Backend:
    return make_backend(request.param, request, powerdns)


def domain(zone: str, **extra: Any) -> MailDomainSpec:
    return MailDomainSpec.model_validate(
        {"domain": zone, "tlsRpt": {"rua": [f"mailto:tls@{zone}"]}, **extra}
    )


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return generate_dkim_key(DkimAlgorithm.RSA_2048)


def wanted(spec: MailDomainSpec, pem: str) -> list[DnsRecord]:
    key = DkimKeyMaterial(spec.domain, "s1", DkimAlgorithm.RSA_2048, pem)
    return domain_records(spec, [key])


async def test_publish_repair_update_and_withdraw(backend: Backend, rsa_pem: str) -> None:
    zone, owner = backend.zone, "mail/example"
    spec = domain(zone)
    records = wanted(spec, rsa_pem)
    dkim = next(r for r in records if r.purpose == "DKIM")
    assert len(dkim.value) > 255  # several character-strings on the wire

    async def run(records: Sequence[DnsRecord], dns_spec: DnsSpec | None = None) -> Any:
        return await publish_domain(
            dns_spec or backend.spec,
            records,
            zone=zone,
            owner=owner,
            credential=backend.credential,
            authoritative=[backend.server],
            delays=NO_DELAY,
        )

    # 1. Create: everything ours appears, beside the records that were there.
    first = await run(records)
    assert (first.status, first.reason) == (ConditionStatus.TRUE, "Published"), first.message
    assert {a.kind for a in first.changed} == {ActionKind.CREATE}
    assert len(first.changed) == len(records)
    for record in records:
        assert record.value in backend.values(record.name, record.type.value), record
    assert backend.values(zone, "TXT") == {FOREIGN_TXT, records[1].value}
    assert backend.values(zone, "MX") == {FOREIGN_MX, f"10 mail.{zone}."}
    assert backend.values(f"_letterbox.{zone}", "TXT")  # the registry claims

    # 2. Idempotent: a second pass changes nothing.
    second = await run(records)
    assert second.status is ConditionStatus.TRUE and second.changed == ()

    # 3. Drift: our SPF edited by hand, our DMARC deleted by hand; both come back, reported.
    backend.hand_set(zone, "TXT", [f'"{FOREIGN_TXT}"', '"v=spf1 a ip4:192.0.2.9 -all"'])
    backend.hand_set(f"_dmarc.{zone}", "TXT", [])
    repaired = await run(records)
    assert repaired.status is ConditionStatus.TRUE
    assert sorted((a.name, a.kind) for a in repaired.drift) == [
        (f"_dmarc.{zone}", ActionKind.REPAIR),
        (zone, ActionKind.REPAIR),
    ]
    assert backend.values(zone, "TXT") == {FOREIGN_TXT, records[1].value}
    assert backend.values(f"_dmarc.{zone}", "TXT") == {records[2].value}

    # 4. The spec changes: DMARC updated in place; TLS-RPT no longer wanted but upsert-only
    #    keeps it; foreign values untouched.
    changed_spec = MailDomainSpec.model_validate({"domain": zone, "dmarc": {"policy": "reject"}})
    changed = wanted(changed_spec, rsa_pem)
    update = await run(changed)
    assert [(a.kind, a.name) for a in update.changed] == [(ActionKind.UPDATE, f"_dmarc.{zone}")]
    assert backend.values(f"_dmarc.{zone}", "TXT") == {changed[2].value}
    assert backend.values(f"_smtp._tls.{zone}", "TXT")  # kept
    # ... and sync withdraws it.
    sync = backend.spec.model_copy(update={"policy": DnsPolicy.SYNC})
    synced = await run(changed, sync)
    assert [(a.kind, a.name) for a in synced.changed] == [(ActionKind.DELETE, f"_smtp._tls.{zone}")]
    assert backend.values(f"_smtp._tls.{zone}", "TXT") == set()

    # 5. The domain goes: only our values leave.
    provider = provider_for(backend.spec, backend.credential)
    assert provider is not None
    try:
        gone = await withdraw(provider, zone=zone, owner=owner, delays=NO_DELAY)
        assert {a.kind for a in gone.actions} == {ActionKind.DELETE}
        listing = await provider.records(zone)
    finally:
        await provider.aclose()
    assert backend.values(zone, "TXT") == {FOREIGN_TXT}
    assert backend.values(zone, "MX") == {FOREIGN_MX}
    assert backend.values(f"s1._domainkey.{zone}", "TXT") == set()
    assert not any(r.name.startswith("_letterbox.") for r in listing)
    assert {r.type for r in listing} >= {"SOA", "NS"}


async def test_wrong_or_missing_credentials_are_refused_and_change_nothing(
    backend: Backend, rsa_pem: str
) -> None:
    records = wanted(domain(backend.zone), rsa_pem)
    for spec, credential in backend.wrong:
        outcome = await publish_domain(
            spec,
            records,
            zone=backend.zone,
            owner="mail/example",
            credential=credential,
            authoritative=[backend.server],
            delays=NO_DELAY,
        )
        assert (outcome.status, outcome.reason) == (
            ConditionStatus.FALSE,
            "InvalidCredentials",
        ), outcome.message
        assert not outcome.temporary
        assert backend.values(backend.zone, "TXT") == {FOREIGN_TXT}
        assert backend.values(f"_dmarc.{backend.zone}", "TXT") == set()


async def test_an_unsigned_update_is_refused_even_where_listing_is_allowed(
    rfc2136_backend: Backend,
) -> None:
    """The key guards the UPDATE itself (PowerDNS lets loopback AXFR unsigned by default)."""
    backend = rfc2136_backend
    unsigned = provider_for(rfc2136_spec(backend.server, None), None)
    assert unsigned is not None
    with pytest.raises(InvalidCredentials, match="refused the update"):
        await unsigned.apply(
            backend.zone, [Change(backend.zone, RecordType.TXT, 300, ("v=spf1 +all",))]
        )
    assert backend.values(backend.zone, "TXT") == {FOREIGN_TXT}


async def test_a_change_the_server_refuses_is_not_called_a_credentials_problem(
    bind: Bind, rsa_pem: str
) -> None:
    """BIND refuses an MX whose in-zone target has no address (check-integrity); the key is
    fine, and the condition must say the change was refused, not the credentials."""
    outcome = await publish_domain(
        rfc2136_spec(bind.nameserver, bind.key_name),
        wanted(domain(BARE_ZONE), rsa_pem),
        zone=BARE_ZONE,
        owner="mail/example",
        credential=bind.secret,
        authoritative=[bind.nameserver],
        delays=NO_DELAY,
    )
    assert (outcome.status, outcome.reason) == (ConditionStatus.FALSE, "ChangeRefused")
    assert "accepts TSIG key letterbox-update" in outcome.message
    assert bind.query(BARE_ZONE, "TXT") == [f'"{FOREIGN_TXT}"']


async def test_propagation_waits_for_every_authoritative_server(
    powerdns: PowerDns, bind: Bind
) -> None:
    zone = BIND_ZONES[-1]  # served by BIND, not by PowerDNS
    record = DnsRecord(zone, RecordType.TXT, FOREIGN_TXT, 300)
    done = await check_propagation([record], [bind.nameserver])
    assert done.complete
    pending = await check_propagation([record], [bind.nameserver, powerdns.nameserver])
    assert pending.pending == (f"TXT {zone} at {powerdns.nameserver}",)
    missing = DnsRecord(zone, RecordType.TXT, "v=spf1 -all", 300)
    assert not (await check_propagation([missing], [bind.nameserver])).complete


async def test_authoritative_servers_come_from_the_zones_ns_records(bind: Bind) -> None:
    zone = BIND_ZONES[-1]
    assert await authoritative_servers(zone, nameservers=[bind.nameserver]) == ["127.0.0.1:53"]
