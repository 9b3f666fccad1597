"""What the namespace pass asks of letterbox.dns: publish a domain's records (and withdraw the
DKIM records it no longer wants), check that DKIM records are live, withdraw a deleted
domain's records.

DKIM records are the one kind whose removal is part of the lifecycle rather than a policy
choice: a retired key's record is withdrawn even under `upsert-only` (which otherwise never
deletes), and so is the record of a key whose DKIMKey is gone. Only names with a `_domainkey`
label, and only values this owner (one MailDomain) created, are ever swept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from letterbox.api.conditions import find_condition
from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy, DnsProviderKind, DnsSpec, MailDomain
from letterbox.api.meta import ConditionStatus
from letterbox.dns.plan import Plan, plan, registry_name
from letterbox.dns.provider import DnsProvider, DnsProviderError, absolute
from letterbox.dns.publish import (
    BACKOFF_SECONDS,
    DNS_PUBLISHED,
    DnsOutcome,
    Sleep,
    authoritative_servers,
    check_propagation,
    provider_for,
    publish_domain,
    retrying,
    withdraw,
)

API_PROVIDERS = frozenset(
    {DnsProviderKind.RFC2136, DnsProviderKind.POWERDNS, DnsProviderKind.CLOUDFLARE}
)
# DnsOutcome reasons after which the DKIM sweep is known to have run.
SWEPT_REASONS = frozenset(
    {"Published", "Propagating", "RecordConflict", "Manual", "HandedToExternalDNS"}
)


def calls_provider(spec: DnsSpec) -> bool:
    return spec.provider in API_PROVIDERS


def handed_to_external_dns(domain: MailDomain) -> bool:
    """Whether the stored status says a DNSEndpoint was written for the domain: how a process
    that did not write it (a restart, a new leader) knows there may be one to delete when the
    provider is no longer externalDNS. The Role cannot get or list DNSEndpoints, on purpose."""
    found = find_condition(domain.status.conditions, DNS_PUBLISHED)
    return found is not None and found.reason == "HandedToExternalDNS"


def is_dkim_name(name: str) -> bool:
    return "_domainkey" in absolute(name).split(".")


async def sweep_dkim(
    provider: DnsProvider,
    wanted: Sequence[DnsRecord],
    *,
    zone: str,
    owner: str,
    delays: Sequence[float] = BACKOFF_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> Plan:
    """Withdraw our values at DKIM names that `wanted` no longer holds (and their registry
    claims); every other name of the zone is left out of the plan entirely."""
    dkim = [r for r in wanted if is_dkim_name(r.name)]

    async def once() -> Plan:
        listing = await provider.records(zone)
        names = {
            absolute(r.name)
            for r in listing
            if r.type == RecordType.TXT
            and is_dkim_name(r.name)
            and not absolute(r.name).startswith("_letterbox.")
        }
        scope = names | {registry_name(n) for n in names}
        current = [r for r in listing if absolute(r.name) in scope]
        # Wanted records at names outside the scope are the publishing pass's to create: the
        # sweep sees too little of the zone (a CNAME there, say) to write them safely.
        kept = [r for r in dkim if absolute(r.name) in names]
        steps = plan(kept, current, zone=zone, owner=owner, policy=DnsPolicy.SYNC)
        if not steps.empty:
            await provider.apply(zone, steps.changes)
        return steps

    return await retrying(once, delays=delays, sleep=sleep)


async def publish_and_sweep(
    spec: DnsSpec,
    records: Sequence[DnsRecord],
    *,
    zone: str,
    owner: str,
    credential: str | None,
    authoritative: Sequence[str] | None = None,
) -> DnsOutcome:
    """`publish_domain`, after withdrawing the DKIM records no key needs any more."""
    if calls_provider(spec):
        provider: DnsProvider | None = None
        try:
            provider = provider_for(spec, credential)
            assert provider is not None
            await sweep_dkim(provider, records, zone=zone, owner=owner)
        except DnsProviderError as error:
            return DnsOutcome(ConditionStatus.FALSE, error.reason, str(error), error.temporary)
        finally:
            if provider is not None:
                await provider.aclose()
    return await publish_domain(
        spec,
        records,
        zone=zone,
        owner=owner,
        credential=credential,
        authoritative=authoritative,
    )


async def withdraw_domain(spec: DnsSpec, *, zone: str, owner: str, credential: str | None) -> Plan:
    """Every value `owner` published in the zone, withdrawn (raises DnsProviderError)."""
    provider = provider_for(spec, credential)
    if provider is None:
        return Plan()
    try:
        return await withdraw(provider, zone=zone, owner=owner)
    finally:
        await provider.aclose()


async def live_records(
    records: Sequence[DnsRecord], *, zone: str, authoritative: Sequence[str] | None
) -> frozenset[DnsRecord]:
    """The records every authoritative server of the zone answers (none when the servers
    cannot be found: not live as far as anyone can tell)."""
    if not records:
        return frozenset()
    try:
        servers = list(authoritative) if authoritative else await authoritative_servers(zone)
    except DnsProviderError:
        return frozenset()
    checks = await asyncio.gather(*(check_propagation([r], servers) for r in records))
    return frozenset(r for r, check in zip(records, checks, strict=True) if check.complete)
