"""Publishing a domain's records: plan against the live zone, apply, confirm at the zone's
authoritative servers, and say what happened in a form the reconcile turns into the
`DNSPublished` condition and events.

Every pass re-reads the zone, so a value someone edited or deleted by hand is repaired on the
next pass (on change or on the resync timer) and reported as drift. Provider calls are retried
with back-off inside a pass; what still fails is a temporary condition the next pass retries.
Bad credentials are not retried: they need someone to fix a Secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsPolicy, DnsProviderKind, DnsSpec
from letterbox.api.meta import ConditionStatus
from letterbox.dns.cloudflare import CloudflareProvider
from letterbox.dns.plan import Action, Plan, plan
from letterbox.dns.powerdns import PowerDnsProvider
from letterbox.dns.provider import (
    DnsProvider,
    DnsProviderError,
    InvalidCredentials,
    absolute,
    normalize_value,
)
from letterbox.dns.rfc2136 import Rfc2136Provider, presentation, resolve_address, split_host_port

DNS_PUBLISHED = "DNSPublished"
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0)
QUERY_TIMEOUT = 3.0

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


def owner_id(namespace: str, name: str) -> str:
    """The registry owner of a MailDomain's records."""
    return f"{namespace}/{name}"


def provider_for(spec: DnsSpec, credential: str | None) -> DnsProvider | None:
    """The provider `spec` names, or None for `manual` and `externalDNS` (nothing to call).
    `credential` is the value of `credentialsSecretRef`."""
    kind = spec.provider
    if kind in (DnsProviderKind.MANUAL, DnsProviderKind.EXTERNAL_DNS):
        return None
    ref = spec.credentials_secret_ref
    where = f"Secret {ref.name} key {ref.key}" if ref else "credentialsSecretRef"
    if kind is DnsProviderKind.RFC2136 and spec.rfc2136 is not None:
        settings = spec.rfc2136
        if settings.tsig_key_name is not None and not credential:
            raise InvalidCredentials(f"the TSIG secret ({where}) is empty")
        return Rfc2136Provider(
            settings.server,
            key_name=settings.tsig_key_name,
            secret=credential,
            algorithm=settings.tsig_algorithm.value,
        )
    if not credential:
        raise InvalidCredentials(f"the {kind.value} credential ({where}) is empty")
    if kind is DnsProviderKind.POWERDNS and spec.powerdns is not None:
        return PowerDnsProvider(
            spec.powerdns.url, credential.strip(), server_id=spec.powerdns.server_id
        )
    if kind is DnsProviderKind.CLOUDFLARE:
        zone_id = spec.cloudflare.zone_id if spec.cloudflare is not None else None
        return CloudflareProvider(credential.strip(), zone_id=zone_id)
    raise InvalidCredentials(f"provider {kind.value} is missing its settings")


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    delays: Sequence[float] = BACKOFF_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """`call`, again after each delay while it fails temporarily."""
    for delay in (*delays, None):
        try:
            return await call()
        except DnsProviderError as error:
            if not error.temporary or delay is None:
                raise
        await sleep(delay)
    raise AssertionError("unreachable")


# --- propagation --------------------------------------------------------------------------------


async def authoritative_servers(
    zone: str, *, nameservers: Sequence[str] | None = None, query_timeout: float = QUERY_TIMEOUT
) -> list[str]:
    """`ip:53` of each of the zone's NS, looked up through `nameservers` (host:port) or the
    system resolver."""
    resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        resolver.nameservers = [split_host_port(s)[0] for s in nameservers]
        resolver.port = split_host_port(nameservers[0])[1] if nameservers else 53
    resolver.lifetime = query_timeout
    try:
        answer = await resolver.resolve(absolute(zone) + ".", "NS")
    except dns.exception.DNSException as error:
        raise DnsProviderError(f"cannot look up the NS of {absolute(zone)}: {error}") from error
    servers: list[str] = []
    for ns in sorted(presentation(r) for r in answer):
        for rtype in ("A", "AAAA"):
            try:
                addresses = await resolver.resolve(ns, rtype)
            except dns.exception.DNSException:
                continue
            servers += [f"[{a}]:53" if ":" in a.to_text() else f"{a}:53" for a in addresses]
    if not servers:
        raise DnsProviderError(f"no address found for any NS of {absolute(zone)}")
    return servers


async def _ask(server: str, name: str, rtype: RecordType, query_timeout: float) -> set[str] | None:
    """The values `server` answers for (name, type), authoritatively; None if it did not."""
    host, port = split_host_port(server)
    where = await resolve_address(host)
    query = dns.message.make_query(absolute(name) + ".", rtype.value)
    query.flags &= ~dns.flags.RD
    try:
        response = await dns.asyncquery.udp(query, where, timeout=query_timeout, port=port)
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(query, where, timeout=query_timeout, port=port)
    except (dns.exception.DNSException, OSError):
        return None
    if not response.flags & dns.flags.AA:
        return None
    wanted = dns.rdatatype.from_text(rtype.value)
    return {
        normalize_value(rtype, presentation(rdata))
        for rrset in response.answer
        if rrset.rdtype == wanted
        for rdata in rrset
    }


@dataclass(frozen=True)
class Propagation:
    servers: tuple[str, ...]
    pending: tuple[str, ...] = ()
    """'TXT example.com at 192.0.2.1:53' for each record a server does not answer yet."""

    @property
    def complete(self) -> bool:
        return not self.pending


async def check_propagation(
    records: Iterable[DnsRecord], servers: Sequence[str], *, query_timeout: float = QUERY_TIMEOUT
) -> Propagation:
    """Ask each authoritative server directly (no caches in between) for every record."""
    grouped: dict[tuple[str, RecordType], set[str]] = {}
    for record in records:
        key = (absolute(record.name), record.type)
        grouped.setdefault(key, set()).add(normalize_value(record.type, record.value))
    checks = [(server, key) for server in servers for key in sorted(grouped)]
    answers = await asyncio.gather(
        *(_ask(server, name, rtype, query_timeout) for server, (name, rtype) in checks)
    )
    pending = tuple(
        f"{rtype.value} {name} at {server}"
        for (server, (name, rtype)), got in zip(checks, answers, strict=True)
        if got is None or not grouped[name, rtype] <= got
    )
    return Propagation(tuple(servers), pending)


# --- publishing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    plan: Plan
    """What this pass changed (its `drift` is what it repaired)."""
    propagation: Propagation | None = None


async def publish(
    provider: DnsProvider,
    records: Sequence[DnsRecord],
    *,
    zone: str,
    owner: str,
    policy: DnsPolicy = DnsPolicy.UPSERT_ONLY,
    authoritative: Sequence[str] | None = None,
    check: bool = True,
    delays: Sequence[float] = BACKOFF_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> PublishResult:
    """Bring the zone to hold `records` (values of `owner` only) and confirm them at the
    zone's authoritative servers: `authoritative` (host:port) or those its NS records name."""

    async def once() -> Plan:
        current = await provider.records(zone)
        steps = plan(records, current, zone=zone, owner=owner, policy=policy)
        if not steps.empty:
            await provider.apply(zone, steps.changes)
        return steps

    steps = await retrying(once, delays=delays, sleep=sleep)
    if not check:
        return PublishResult(steps)
    blocked = {c.record for c in steps.conflicts}
    servers = list(authoritative) if authoritative else await authoritative_servers(zone)
    propagation = await check_propagation([r for r in records if r not in blocked], servers)
    return PublishResult(steps, propagation)


async def withdraw(
    provider: DnsProvider,
    *,
    zone: str,
    owner: str,
    delays: Sequence[float] = BACKOFF_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> Plan:
    """Remove every value `owner` published in `zone` (and its registry claims); other values,
    including hand-edited ones, stay."""

    async def once() -> Plan:
        current = await provider.records(zone)
        steps = plan((), current, zone=zone, owner=owner, policy=DnsPolicy.SYNC)
        if not steps.empty:
            await provider.apply(zone, steps.changes)
        return steps

    return await retrying(once, delays=delays, sleep=sleep)


# --- what the reconcile needs -----------------------------------------------------------------


@dataclass(frozen=True)
class DnsOutcome:
    """A pass's result for one MailDomain, ready for status and events."""

    status: ConditionStatus
    reason: str
    message: str
    temporary: bool = False
    """Look again soon (provider error, records still propagating)."""
    drift: tuple[Action, ...] = field(default=())
    """Hand edits this pass repaired: worth a Warning event."""
    changed: tuple[Action, ...] = field(default=())

    @property
    def condition(self) -> tuple[str, ConditionStatus, str, str]:
        """The `extra` condition tuple reconcile/status.py takes."""
        return (DNS_PUBLISHED, self.status, self.reason, self.message)


async def publish_domain(
    spec: DnsSpec,
    records: Sequence[DnsRecord],
    *,
    zone: str,
    owner: str,
    credential: str | None,
    authoritative: Sequence[str] | None = None,
    delays: Sequence[float] = BACKOFF_SECONDS,
    sleep: Sleep = asyncio.sleep,
    make_provider: Callable[[DnsSpec, str | None], DnsProvider | None] = provider_for,
) -> DnsOutcome:
    """One MailDomain's publishing pass, every failure turned into a condition."""
    if spec.provider is DnsProviderKind.MANUAL:
        return DnsOutcome(
            ConditionStatus.UNKNOWN,
            "Manual",
            "provider manual: publish the records in status.records (or from "
            "`letterbox dns-plan`) at your DNS host",
        )
    if spec.provider is DnsProviderKind.EXTERNAL_DNS:
        return DnsOutcome(
            ConditionStatus.TRUE,
            "HandedToExternalDNS",
            "the records are in a DNSEndpoint object for external-dns to publish",
        )
    provider: DnsProvider | None = None
    try:
        provider = make_provider(spec, credential)
        assert provider is not None
        result = await publish(
            provider,
            records,
            zone=zone,
            owner=owner,
            policy=spec.policy,
            authoritative=authoritative,
            delays=delays,
            sleep=sleep,
        )
    except DnsProviderError as error:
        return DnsOutcome(ConditionStatus.FALSE, error.reason, str(error), error.temporary)
    finally:
        if provider is not None:
            await provider.aclose()
    steps = result.plan
    if steps.conflicts:
        return DnsOutcome(
            ConditionStatus.FALSE,
            "RecordConflict",
            "; ".join(c.message for c in steps.conflicts),
            temporary=False,
            drift=steps.drift,
            changed=steps.actions,
        )
    propagation = result.propagation
    if propagation is not None and not propagation.complete:
        shown = ", ".join(propagation.pending[:5])
        more = len(propagation.pending) - 5
        return DnsOutcome(
            ConditionStatus.FALSE,
            "Propagating",
            f"published; not yet answered by every authoritative server: {shown}"
            + (f" and {more} more" if more > 0 else ""),
            temporary=True,
            drift=steps.drift,
            changed=steps.actions,
        )
    servers = (
        f" and answered by {len(propagation.servers)} authoritative servers" if propagation else ""
    )
    return DnsOutcome(
        ConditionStatus.TRUE,
        "Published",
        f"{len(records)} records published in {absolute(zone)}{servers}",
        drift=steps.drift,
        changed=steps.actions,
    )


# --- across passes ------------------------------------------------------------------------------

RESYNC_SECONDS = 300.0
RETRY_SECONDS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class _Published:
    digest: str
    outcome: DnsOutcome
    next_run: float
    failures: int


PublishFn = Callable[..., Awaitable[DnsOutcome]]


class DnsPublisher:
    """Publishing state per MailDomain across reconcile passes.

    A namespace pass runs for any change (a Mailbox, a password), but a domain's DNS only needs
    a provider round trip when its records or DNS settings changed, when the last attempt failed
    temporarily (retried with growing delays), or when the resync interval is up (which is what
    finds and repairs hand edits). Otherwise the last outcome is returned as it is.
    """

    def __init__(
        self,
        *,
        resync_seconds: float = RESYNC_SECONDS,
        retry_seconds: Sequence[float] = RETRY_SECONDS,
        authoritative: Callable[[str], Sequence[str] | None] = lambda zone: None,
        clock: Callable[[], float] = time.monotonic,
        publish_fn: PublishFn = publish_domain,
    ) -> None:
        self.resync_seconds = resync_seconds
        self.retry_seconds = tuple(retry_seconds)
        self.authoritative = authoritative
        self._clock = clock
        self._publish = publish_fn
        self._state: dict[str, _Published] = {}

    @staticmethod
    def _digest(spec: DnsSpec, records: Sequence[DnsRecord], credential: str | None) -> str:
        data = json.dumps(
            [
                spec.model_dump(mode="json"),
                sorted((r.name, r.type.value, r.value, r.ttl) for r in records),
                hashlib.sha256((credential or "").encode()).hexdigest(),
            ]
        )
        return hashlib.sha256(data.encode()).hexdigest()

    async def publish(
        self,
        key: str,
        spec: DnsSpec,
        records: Sequence[DnsRecord],
        *,
        zone: str,
        owner: str,
        credential: str | None,
        force: bool = False,
    ) -> DnsOutcome:
        """The domain's outcome: fresh if anything is due, else the last one."""
        digest = self._digest(spec, records, credential)
        now = self._clock()
        state = self._state.get(key)
        if state is not None and state.digest == digest and now < state.next_run and not force:
            return state.outcome
        outcome = await self._publish(
            spec,
            records,
            zone=zone,
            owner=owner,
            credential=credential,
            authoritative=self.authoritative(zone),
        )
        failures = (
            (state.failures + 1 if state and state.digest == digest else 1)
            if (outcome.temporary)
            else 0
        )
        delay = (
            self.retry_seconds[min(failures, len(self.retry_seconds)) - 1]
            if failures
            else self.resync_seconds
        )
        self._state[key] = _Published(digest, outcome, now + delay, failures)
        return outcome

    def due_in(self) -> float | None:
        """Seconds until the next domain is due (for scheduling a pass), None if none."""
        if not self._state:
            return None
        return max(0.0, min(s.next_run for s in self._state.values()) - self._clock())

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of domains that are gone."""
        kept = set(keep)
        for key in [k for k in self._state if k not in kept]:
            del self._state[key]
